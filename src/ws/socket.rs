//! The socket under a connection: the upgrade handshake (RFC 6455 §4.2) and the split of the
//! upgraded stream (TCP, or TLS over it) into tungstenite's reader and the connection's own
//! writer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use axum::http::{HeaderMap, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::Bytes;

use super::writer::Out;

/// The `Sec-WebSocket-Accept` for a well-formed upgrade request, or why it is not one: 400,
/// or 426 for another version (RFC 6455 §4.2.1-4.2.2; the answer names 13).
pub fn accept_key(headers: &HeaderMap) -> Result<String, (StatusCode, &'static str)> {
    let has = |name, want: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(want))
    };
    let bad = |why| Err((StatusCode::BAD_REQUEST, why));
    if !has(CONNECTION, "upgrade") {
        return bad("Connection header did not include 'upgrade'");
    }
    if !has(UPGRADE, "websocket") {
        return bad("Upgrade header did not include 'websocket'");
    }
    if headers
        .get("sec-websocket-version")
        .map(axum::http::HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version not supported (13 only)",
        ));
    }
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    match (keys.next(), keys.next()) {
        (Some(key), None) if is_key(key.as_bytes()) => {
            Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
        }
        (None, _) => bad("Sec-WebSocket-Key header missing"),
        (Some(_), Some(_)) => bad("Sec-WebSocket-Key header given more than once"),
        (Some(_), None) => bad("Sec-WebSocket-Key is not 16 bytes in base64"),
    }
}

/// Whether a `Sec-WebSocket-Key` is 16 bytes in base64: 22 characters of the alphabet, the
/// last of which carries only 2 bits (so `A`, `Q`, `g` or `w`), then `==`.
fn is_key(key: &[u8]) -> bool {
    let b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24
        && key[..22].iter().all(b64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
}

/// The 101 answer that completes the handshake.
pub fn switching(accept: &str) -> axum::response::Response {
    let mut r = axum::response::Response::new(axum::body::Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(CONNECTION, axum::http::HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, axum::http::HeaderValue::from_static("websocket"));
    if let Ok(v) = axum::http::HeaderValue::from_str(accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// The TLS stream of an HTTPS connection.
type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// A connection's read half: a TCP stream's own, or a TLS stream's (which takes turns with its
/// write half, as the cipher state is one).
pub enum ReadIo {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream>),
}

/// A connection's write half, which only the writer task holds.
pub enum WriteIo {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream>),
}

impl AsyncRead for ReadIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadIo::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadIo::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteIo::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteIo::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteIo::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteIo::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteIo::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteIo::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// An upgraded connection, split: tungstenite reads; the writer task owns the write half and
/// takes what the others send through `replies`.
pub struct Socket {
    pub stream: WebSocketStream<ReadSide>,
    pub write: WriteIo,
    pub replies: mpsc::Sender<Out>,
    pub replies_rx: mpsc::Receiver<Out>,
}

/// Splits the upgraded stream: tungstenite over the read half, within `read_limit`, and the
/// write half for the writer. What tungstenite writes on its own while reading (a pong, the
/// echo of a client's close) also goes to the writer, as a reply, so only the writer writes.
pub async fn split(
    upgraded: hyper::upgrade::Upgraded,
    read_limit: usize,
    replies_capacity: usize,
) -> Result<Socket, &'static str> {
    // Our HTTP server serves TCP, or TLS over it (http::connection): one of these two.
    let (read, write, read_buf) = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (r, w) = parts.io.into_inner().into_split();
            (ReadIo::Tcp(r), WriteIo::Tcp(w), parts.read_buf)
        }
        Err(upgraded) => {
            let parts = upgraded
                .downcast::<TokioIo<TlsStream>>()
                .map_err(|_| "the upgraded connection is neither TCP nor TLS")?;
            let (r, w) = tokio::io::split(parts.io.into_inner());
            (ReadIo::Tls(r), WriteIo::Tls(w), parts.read_buf)
        }
    };
    let (replies, replies_rx) = mpsc::channel(replies_capacity);
    // tungstenite's defaults (128 KiB read buffer) would cost 128 MB at 1,000 clients; requests
    // are small. Its write side only carries pongs and close echoes.
    let config = WebSocketConfig::default()
        .max_message_size(Some(read_limit))
        .max_frame_size(Some(read_limit))
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    let side = ReadSide {
        read,
        control: replies.clone(),
    };
    let stream =
        WebSocketStream::from_partially_read(side, read_buf.to_vec(), Role::Server, Some(config))
            .await;
    Ok(Socket {
        stream,
        write,
        replies,
        replies_rx,
    })
}

/// The read half, as tungstenite sees the whole socket.
pub struct ReadSide {
    read: ReadIo,
    control: mpsc::Sender<Out>,
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    /// Each write is whole frames (tungstenite writes its buffer out whole, and this takes it
    /// all at once). When the writer has a full queue of replies, the frames are dropped: a
    /// pong may be (RFC 6455 §5.5.3 lets an endpoint answer only the latest ping); a close
    /// echo dropped this way leaves that client seeing the connection end without one.
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let _ = self.control.try_send(Out::Raw(Bytes::copy_from_slice(buf)));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(version: &str, keys: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "Upgrade".parse().unwrap());
        h.insert(UPGRADE, "websocket".parse().unwrap());
        h.insert("sec-websocket-version", version.parse().unwrap());
        for k in keys {
            h.append(SEC_WEBSOCKET_KEY, k.parse().unwrap());
        }
        h
    }

    /// #31, item 6: any key (a duplicate, 3 bytes, 10 KB, not base64) got 101.
    #[test]
    fn the_key_is_sixteen_bytes_of_base64_given_once_and_the_version_thirteen() {
        // RFC 6455's own example.
        let good = "dGhlIHNhbXBsZSBub25jZQ==";
        assert_eq!(
            accept_key(&headers("13", &[good])).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let long = "A".repeat(10_000);
        for keys in [
            vec![],
            vec![good, good],
            vec!["abc"],
            vec![long.as_str()],
            vec!["dGhlIHNhbXBsZSBub25jZQ=!"],
            vec!["dGhlIHNhbXBsZSBub25jZR=="],
            vec!["dGhlIHNhbXBsZSBub25j*Q=="],
        ] {
            let r = accept_key(&headers("13", &keys)).unwrap_err();
            assert_eq!(r.0, StatusCode::BAD_REQUEST, "{keys:?}");
        }
        let r = accept_key(&headers("8", &[good])).unwrap_err();
        assert_eq!(r.0, StatusCode::UPGRADE_REQUIRED);
    }
}
