//! An OPC UA client session for tests (async-opcua's client): over the unsecured endpoint or
//! Basic256Sha256 SignAndEncrypt, with the identity given.

use std::sync::Arc;

use ua::client::{ClientBuilder, IdentityToken, Session};
use ua::types::{MessageSecurityMode, StatusCode, UserTokenPolicy};

/// A session on `url` (its certificate made in `pki` when `secure`), or the status it was
/// refused with.
pub async fn session(
    url: &str,
    pki: &std::path::Path,
    secure: bool,
    identity: IdentityToken,
) -> Result<Arc<Session>, StatusCode> {
    let mut client = ClientBuilder::new()
        .application_name("edge-gateway tests")
        .application_uri("urn:edge-gateway:tests")
        .pki_dir(pki)
        .create_sample_keypair(secure)
        .trust_server_certs(true)
        .session_retry_limit(0)
        // Large enough to send the requests a server must refuse.
        .max_array_length(200_000)
        .max_message_size(64 << 20)
        .max_chunk_count(2048)
        .client()
        .map_err(|_| StatusCode::BadConfigurationError)?;
    let (policy, mode) = if secure {
        (
            "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256",
            MessageSecurityMode::SignAndEncrypt,
        )
    } else {
        (
            "http://opcfoundation.org/UA/SecurityPolicy#None",
            MessageSecurityMode::None,
        )
    };
    let token = match identity {
        IdentityToken::Anonymous => UserTokenPolicy::anonymous(),
        _ => UserTokenPolicy {
            token_type: ua::types::UserTokenType::UserName,
            ..Default::default()
        },
    };
    let (session, event_loop) = client
        .connect_to_matching_endpoint((url, policy, mode, token), identity)
        .await
        .map_err(|e| e.status())?;
    let mut ev = event_loop.spawn();
    // A refused session ends the event loop; the session itself would wait on.
    tokio::select! {
        up = session.wait_for_connection() => if up { Ok(session) } else { Err(StatusCode::Bad) },
        end = &mut ev => Err(end.unwrap_or(StatusCode::Bad)),
    }
}

/// An anonymous session over the unsecured endpoint, and the index of the test gateway's
/// namespace (`urn:edge-gateway:test-gw`).
pub async fn anonymous(url: &str, pki: &std::path::Path) -> (Arc<Session>, u16) {
    let s = session(url, pki, false, IdentityToken::Anonymous)
        .await
        .expect("an anonymous session");
    let ns = s.read_namespace_array().await.expect("the namespace array");
    let ns = ns
        .get_index("urn:edge-gateway:test-gw")
        .expect("the gateway's namespace");
    (s, ns)
}
