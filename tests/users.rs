//! Users from the dashboard, against a gateway process and its config file: added, listed,
//! given another role, a password reset, removed, and a password changed by its owner — each
//! written into `[[users]]` with the file's comments kept, a history version, an audit row; the
//! password rules; the last admin kept; the sessions of a user removed or changed ended.

mod common;

use common::wsclient::*;
use common::*;
use edge_gateway::modbus::simulator::Profile;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn users_are_managed_from_the_dashboard_with_the_rules_and_their_sessions_ended() {
    let (_sim, sim, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "# Line 3's gateway. Keep this comment.\n{}{BOILER_AND_PUMP}",
        process_head(dir.path(), sim)
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &text).unwrap();
    let (_gw, addr) = spawn_gateway(gateway_command(&path), None);
    let mut admin = Ws::connect(addr).await;
    assert_eq!(code(&admin.login("admin", "admin").await), 0);
    let mut viewer = Ws::connect(addr).await;
    assert_eq!(code(&viewer.login("viewer", "viewer").await), 0);

    let r = admin.call("users.list", json!({})).await;
    assert_eq!(code(&r), 0, "{r}");
    let names: Vec<_> = r["data"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["admin", "viewer"]);
    assert_eq!(r["data"]["users"][1]["sessions"], 1);
    assert_eq!(code(&viewer.call("users.list", json!({})).await), 403);
    assert_eq!(
        code(
            &viewer
                .call(
                    "users.add",
                    json!({"username": "x", "role": "viewer", "password": "long enough pw"})
                )
                .await
        ),
        403
    );

    // The password rules, each named.
    for (pw, why) in [
        ("short", "at least 10"),
        ("anna.tech1", "user name"),
        ("QwertyUiop", "common"),
    ] {
        let r = admin
            .call(
                "users.add",
                json!({"username": "anna.tech1", "role": "viewer", "password": pw}),
            )
            .await;
        assert_eq!(code(&r), 400, "{pw}: {r}");
        assert!(r["msg"].as_str().unwrap().contains(why), "{pw}: {r}");
    }
    let r = admin
        .call(
            "users.add",
            json!({"username": "anna", "role": "viewer", "password": "boiler-room-7"}),
        )
        .await;
    assert_eq!(code(&r), 0, "{r}");
    assert_eq!(
        code(
            &admin
                .call(
                    "users.add",
                    json!({"username": "anna", "role": "viewer", "password": "boiler-room-7"})
                )
                .await
        ),
        409
    );
    let mut anna = Ws::connect(addr).await;
    assert_eq!(code(&anna.login("anna", "boiler-room-7").await), 0);
    let file = std::fs::read_to_string(&path).unwrap();
    assert!(
        file.starts_with("# Line 3's gateway. Keep this comment."),
        "{file}"
    );
    assert!(
        file.contains("name = \"anna\"\nrole = \"viewer\"\npassword_hash = \"$argon2id$"),
        "{file}"
    );

    // Her role changes: her session ends, she logs in again as an admin.
    let r = admin
        .call(
            "users.setRole",
            json!({"username": "anna", "role": "admin"}),
        )
        .await;
    assert_eq!(code(&r), 0, "{r}");
    let p = anna.next_push("push.session").await;
    assert_eq!(p["data"]["reason"], "user changed", "{p}");
    let r = anna.login("anna", "boiler-room-7").await;
    assert_eq!(r["data"]["role"], "admin", "{r}");
    // The viewer's session was not touched.
    assert_eq!(code(&viewer.call("devices.list", json!({})).await), 0);

    // Her own password: the old one proven, the rules applied, then her sessions end.
    assert_eq!(
        code(
            &anna
                .call(
                    "auth.changePassword",
                    json!({"old": "wrong-password", "new": "pump-house-42"})
                )
                .await
        ),
        403
    );
    assert_eq!(
        code(
            &anna
                .call(
                    "auth.changePassword",
                    json!({"old": "boiler-room-7", "new": "anna"})
                )
                .await
        ),
        400
    );
    let r = anna
        .call(
            "auth.changePassword",
            json!({"old": "boiler-room-7", "new": "pump-house-42"}),
        )
        .await;
    assert_eq!(code(&r), 0, "{r}");
    anna.next_push("push.session").await;
    assert_eq!(code(&anna.login("anna", "boiler-room-7").await), 401);
    assert_eq!(code(&anna.login("anna", "pump-house-42").await), 0);

    // An admin resets the viewer's password: the viewer is logged out.
    let r = admin
        .call(
            "users.resetPassword",
            json!({"username": "viewer", "password": "new-viewer-pw"}),
        )
        .await;
    assert_eq!(code(&r), 0, "{r}");
    viewer.next_push("push.session").await;
    assert_eq!(code(&viewer.login("viewer", "new-viewer-pw").await), 0);

    // The last admin cannot go nor be demoted; with two, one can.
    let r = anna.call("users.remove", json!({"username": "anna"})).await;
    assert_eq!(code(&r), 0, "{r}");
    let r = admin
        .call(
            "users.setRole",
            json!({"username": "admin", "role": "viewer"}),
        )
        .await;
    assert_eq!(code(&r), 400, "{r}");
    assert!(r["msg"].as_str().unwrap().contains("last admin"), "{r}");
    assert_eq!(
        code(
            &admin
                .call("users.remove", json!({"username": "admin"}))
                .await
        ),
        400
    );
    assert_eq!(
        code(
            &admin
                .call("users.remove", json!({"username": "nobody"}))
                .await
        ),
        404
    );
    assert_eq!(
        code(&Ws::connect(addr).await.login("anna", "pump-house-42").await),
        401
    );

    // Each change a version and an audit row.
    let h = admin.call("config.history", json!({})).await;
    let versions = h["data"]["versions"].as_array().unwrap();
    assert!(versions.len() >= 6, "the first and five changes: {h}");
    assert!(
        versions.iter().any(|v| v["user"] == "anna"),
        "her own change is hers: {h}"
    );
    let a = admin.call("audit.query", json!({})).await;
    let configs = a["data"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["pointId"] == "config")
        .count();
    assert_eq!(configs, 5, "{a}");
    assert!(
        a["data"]["entries"][2]["value"]
            .as_str()
            .unwrap()
            .ends_with("users ~anna"),
        "a new password is a change: {a}"
    );
}
