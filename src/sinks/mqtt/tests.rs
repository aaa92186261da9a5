//! Unit tests of `sinks/mqtt.rs`.

use super::*;

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
