//! What the control plane chooses for the repair, over real HTTP: the
//! network map and the operator's hooks, checked, kept in the state
//! directory across a restart, and cleared.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;

use ferry::serve::api::{ApiState, HttpLimits};
use serde_json::Value;

use crate::control_api::{call, client, start_with, Server, TOKEN};

/// The control API of an appliance that runs a pipeline with `repair`'s
/// choices, its state in `state_dir`; and those settings.
async fn with_pipeline(
    repair: ferry::pipeline::RepairChoices,
    state_dir: &std::path::Path,
) -> (Server, ferry::pipeline::PipelineSettings) {
    with_pipeline_building(repair, state_dir, true).await
}

async fn with_pipeline_building(
    repair: ferry::pipeline::RepairChoices,
    state_dir: &std::path::Path,
    build: bool,
) -> (Server, ferry::pipeline::PipelineSettings) {
    let settings = ferry::pipeline::PipelineSettings {
        build,
        boot_test: Default::default(),
        repair,
        state_dir: state_dir.to_owned(),
    };
    let ledger =
        Arc::new(ferry::job::ledger::Ledger::open(&state_dir.join("ledger.redb")).unwrap());
    let first = settings.clone();
    let s = start_with(HttpLimits::default(), move |state: ApiState| {
        let runner = Arc::new(ferry::pipeline::Runner::new(
            first,
            ledger,
            state.job.clone(),
        ));
        state.with_pipeline(runner)
    })
    .await;
    (s, settings)
}

/// POST `body` as JSON to `path`, with the control token or without;
/// the status and the body (JSON, or its text).
async fn post(s: &Server, path: &str, body: String, token: bool) -> (u16, Value) {
    let mut req = client()
        .post(format!("{}{path}", s.base))
        .header("Content-Type", "application/json")
        .body(body);
    if token {
        req = req.bearer_auth(TOKEN);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn the_network_map_is_checked_kept_across_a_restart_and_cleared() {
    use ferry::repair::network::map::NetworkMap;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().to_owned();
    let config_map = NetworkMap::parse("[[nic]]\nsource = \"eth0\"\nmode = \"dhcp\"\n").unwrap();
    let (s, settings) = with_pipeline(
        ferry::pipeline::RepairChoices {
            recipes_dir: None,
            network: config_map.clone(),
            hooks: Default::default(),
        },
        &state_dir,
    )
    .await;
    let c = client();
    let post =
        |body: &'static str, token: bool| post(&s, "/v1/job/network", body.to_owned(), token);
    let (status, v) = call(&c, &s, "GET", "/v1/job/network").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["from"], "config", "{v}");
    assert_eq!(v["map"]["nic"][0]["source"], "eth0", "{v}");

    let keep = r##"{"instance": ["52:54:00:AA:00:01", "52:54:00:aa:00:02"],
        "nic": [{"source": "ens8", "mode": "keep", "target": "#2", "subnet": "10.0.3.0/24"}]}"##;
    let (status, v) = post(keep, false).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (401, Some("CONTROL_UNAUTHORIZED")),
        "{v}"
    );
    assert!(!state_dir.join(ferry::pipeline::NETWORK_MAP_FILE).exists());

    // Refused, with what is wrong, and nothing kept.
    for (body, detail) in [
        (
            "{\"nic\": [{\"source\": \"ens8\", \"mode\": \"static\"}]}",
            "the network map cannot be read: unknown variant `static`, expected `dhcp` or `keep`",
        ),
        (
            "{\"nic\": [{\"source\": \"ens8\", \"target\": \"#2\"}, {\"source\": \"ens9\"}]}",
            "nic 1 and nic 2 are both mapped onto the new NIC #2; each new NIC takes one",
        ),
        (
            "{\"instance\": [\"52:54:00:aa:00:01\"], \"nic\": [{\"source\": \"ens8\", \"target\": \"52:54:00:aa:00:02\"}]}",
            "nic 1: target 52:54:00:aa:00:02 is not one of the new instance's NICs (52:54:00:aa:00:01)",
        ),
        ("not json", "the network map cannot be read: expected ident at line 1 column 2"),
    ] {
        let (status, v) = post(body, true).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("NETWORK_MAP_INVALID")),
            "{body}: {v}"
        );
        assert_eq!(
            v["detail"].as_str().map(|d| d.starts_with(detail)),
            Some(true),
            "{body}: {v}"
        );
    }
    assert!(!state_dir.join(ferry::pipeline::NETWORK_MAP_FILE).exists());

    let (status, v) = post(keep, true).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["from"], "control", "{v}");
    assert_eq!(v["map"]["instance"][0], "52:54:00:AA:00:01", "{v}");
    assert_eq!(v["map"]["nic"][0]["mode"], "keep", "{v}");
    // Kept in the state directory: an appliance started again follows it.
    let (map, from) = settings.repair.network_map(&state_dir).unwrap();
    assert_eq!(from, ferry::pipeline::MapFrom::Control);
    assert_eq!(map, NetworkMap::parse(keep).unwrap());

    // An empty map: the configuration's applies again.
    let (status, v) = post("{}", true).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["from"], "config", "{v}");
    assert!(!state_dir.join(ferry::pipeline::NETWORK_MAP_FILE).exists());
}

#[tokio::test]
async fn hooks_are_checked_kept_across_a_restart_and_cleared() {
    use ferry::repair::hooks::Hooks;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().to_owned();
    let (s, settings) = with_pipeline(Default::default(), &state_dir).await;
    let c = client();
    let post = |body: String, token: bool| post(&s, "/v1/job/hooks", body, token);
    let (status, v) = call(&c, &s, "GET", "/v1/job/hooks").await;
    assert_eq!((status, &v["from"]), (200, &Value::from("none")), "{v}");
    // The job says what its rounds do.
    let (_, j) = call(&c, &s, "GET", "/v1/job").await;
    assert_eq!(
        j["pipeline"],
        serde_json::json!({"build": true, "boot_test": true}),
        "{j}"
    );

    let good = r##"{"hook": [
        {"name": "agent", "phase": "after-repair", "script": "#!/bin/sh\nrpm -e vmware-tools\n", "must_succeed": true},
        {"name": "hello", "phase": "first-boot", "script": "echo hi", "timeout": 20}]}"##;
    let (status, v) = post(good.to_owned(), false).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (401, Some("CONTROL_UNAUTHORIZED")),
        "{v}"
    );
    assert!(!state_dir.join(ferry::pipeline::HOOKS_FILE).exists());

    // Refused, with what is wrong, and nothing kept.
    for (body, detail) in [
        (r#"{"hook": [{"name": "x", "phase": "later", "script": "true"}]}"#.to_owned(), "the hooks cannot be read: unknown variant `later`, expected `after-repair` or `first-boot`"),
        (r#"{"hook": [{"name": "x y", "phase": "first-boot", "script": "true"}]}"#.to_owned(), "hook 1 (\"x y\"): a name is 1 to 64 letters"),
        (r#"{"hook": [{"name": "x", "phase": "first-boot", "script": "true", "timeout": 0}]}"#.to_owned(), "hook 1 (\"x\"): timeout 0 s is outside 1 to 3600"),
        ("[[hook]]\nname = \"x\"".to_owned(), "the hooks cannot be read: the body is not a JSON object"),
    ] {
        let (status, v) = post(body.clone(), true).await;
        assert_eq!((status, v["code"].as_str()), (400, Some("HOOK_INVALID")), "{body}: {v}");
        assert_eq!(v["detail"].as_str().map(|d| d.starts_with(detail)), Some(true), "{body}: {v}");
    }
    assert!(!state_dir.join(ferry::pipeline::HOOKS_FILE).exists());

    // A body over the hooks' limit is cut, not read.
    let big = format!(
        r#"{{"hook": [{{"name": "x", "phase": "first-boot", "script": "{}"}}]}}"#,
        "y".repeat(600 << 10)
    );
    let (status, _) = post(big, true).await;
    assert_eq!(status, 413);
    // A script larger than the other endpoints' 16 KiB is taken here.
    let larger = format!(
        r#"{{"hook": [{{"name": "x", "phase": "first-boot", "script": "{}"}}]}}"#,
        "y".repeat(40 << 10)
    );
    let (status, v) = post(larger, true).await;
    assert_eq!(status, 200, "{v}");

    let (status, v) = post(good.to_owned(), true).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["from"], "control", "{v}");
    assert_eq!(v["hooks"]["hook"][1]["timeout"], 20, "{v}");
    assert_eq!(v["hooks"]["hook"][0]["timeout"], 300, "the default: {v}");
    // Kept in the state directory: an appliance started again runs them.
    let (hooks, from) = settings.repair.hooks(&state_dir).unwrap();
    assert_eq!(from, ferry::pipeline::MapFrom::Control);
    assert_eq!(hooks, Hooks::parse(good).unwrap());

    let (status, v) = post("{}".to_owned(), true).await;
    assert_eq!((status, &v["from"]), (200, &Value::from("none")), "{v}");
    assert!(!state_dir.join(ferry::pipeline::HOOKS_FILE).exists());
}

#[tokio::test]
async fn hooks_for_an_appliance_that_does_not_build_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = with_pipeline_building(Default::default(), dir.path(), false).await;
    let body = r#"{"hook": [{"name": "x", "phase": "first-boot", "script": "true"}]}"#;
    let (status, v) = post(&s, "/v1/job/hooks", body.to_owned(), true).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("HOOK_INVALID")),
        "{v}"
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("does not build the OS"),
        "{v}"
    );
    assert!(!dir.path().join(ferry::pipeline::HOOKS_FILE).exists());
    // Clearing them is allowed.
    let (status, v) = post(&s, "/v1/job/hooks", "{}".to_owned(), true).await;
    assert_eq!(status, 200, "{v}");
}
