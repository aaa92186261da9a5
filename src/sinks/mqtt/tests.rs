//! Unit tests of `sinks/mqtt.rs`.

use super::*;

#[test]
fn a_telemetry_payload_is_the_json_the_spec_shows() {
    use crate::model::Quality;
    let t = store::outbox::SampleRow {
        id: 1,
        device_id: std::sync::Arc::from("boiler"),
        ts: 1_700_000_000_123,
        points: vec![
            (
                "temperature".into(),
                Some(Value::Float(71.5)),
                Quality::Good,
            ),
            ("on".into(), Some(Value::Bool(true)), Quality::Good),
            ("energy".into(), Some(Value::UInt(u64::MAX)), Quality::Stale),
            (
                "name \"x\"".into(),
                Some(Value::Text("a\nb".into())),
                Quality::Good,
            ),
            ("nan".into(), Some(Value::Float(f64::NAN)), Quality::Bad),
            ("gone".into(), None, Quality::Bad),
        ],
    };
    let got: Json = serde_json::from_slice(&telemetry_payload(&t)).unwrap();
    assert_eq!(
        got,
        json!({"ts": "2023-11-14T22:13:20.123Z", "points": {
            "temperature": {"v": 71.5, "q": "good"},
            "on": {"v": true, "q": "good"},
            "energy": {"v": u64::MAX, "q": "stale"},
            "name \"x\"": {"v": "a\nb", "q": "good"},
            "nan": {"v": null, "q": "bad"},
            "gone": {"v": null, "q": "bad"},
        }})
    );
}

#[test]
fn urls() {
    let t = parse_url("mqtt://broker.plant:1883").unwrap();
    assert_eq!(
        (t.host.as_str(), t.port, t.tls),
        ("broker.plant", 1883, false)
    );
    let t = parse_url("mqtts://u:p%w@host").unwrap();
    assert_eq!((t.port, t.tls), (8883, true));
    assert_eq!(t.credentials, Some(("u".into(), "p%w".into())));
    let t = parse_url("mqtt://[::1]:1884/").unwrap();
    assert_eq!((t.host.as_str(), t.port), ("::1", 1884));
    assert!(parse_url("mqtt://:1883").is_err());
    assert!(parse_url("mqtt://h:99999").is_err());
    assert!(parse_url("http://h").is_err());
}

#[test]
fn write_topics() {
    let t = Topics {
        base: "edge/gw1".into(),
    };
    assert_eq!(t.writes(), "edge/gw1/devices/+/write");
    assert_eq!(
        t.write_device("edge/gw1/devices/pump-1/write"),
        Some("pump-1")
    );
    assert_eq!(t.write_device("edge/gw1/devices/pump-1/write/result"), None);
    assert_eq!(t.write_device("edge/gw2/devices/pump-1/write"), None);
}
