//! WebSocket links: the HTTP upgrade on either side, and [`WsLink`], which carries the
//! link's byte stream as binary messages so the driver sees `AsyncRead + AsyncWrite`.
//!
//! Message and frame sizes are capped ([`MAX_MESSAGE`]), so a peer cannot make this side
//! buffer more than that before the Noise handshake has judged it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::BoxedLink;

/// Largest WebSocket message (and frame) accepted or sent. Writes are split to fit.
const MAX_MESSAGE: usize = 256 * 1024;

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::other(other),
    }
}

/// The server side: answers the upgrade at `path` (404 elsewhere).
pub(super) async fn accept<S>(stream: S, path: &str) -> io::Result<BoxedLink>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // The error type is tungstenite's, so its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() == path {
            return Ok(response);
        }
        let mut refusal =
            ErrorResponse::new(Some(format!("no Warren link at this path; try {path}\n")));
        *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
        Err(refusal)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config()))
        .await
        .map_err(io_error)?;
    Ok(Box::new(WsLink::new(ws)))
}

/// The client side: upgrades `stream` with a request for `scheme://host:port/path`.
pub(super) async fn connect<S>(
    stream: S,
    scheme: &str,
    host: &str,
    port: u16,
    path: &str,
) -> io::Result<BoxedLink>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let url = format!("{scheme}://{authority}{path}");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config()))
        .await
        .map_err(io_error)?;
    Ok(Box::new(WsLink::new(ws)))
}

/// A WebSocket as a byte stream: each write is sent (and flushed) as binary messages of at
/// most [`MAX_MESSAGE`] bytes; reads return the payloads of binary messages in order.
/// Pings are answered by the WebSocket layer; a close or text message ends the stream.
pub(super) struct WsLink<S> {
    ws: WebSocketStream<S>,
    /// What is left of the last message read.
    unread: Bytes,
    /// Bytes of a write that was sent but not yet flushed, to report once it is.
    unflushed: Option<usize>,
}

impl<S> WsLink<S> {
    fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            unread: Bytes::new(),
            unflushed: None,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsLink<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.unread.is_empty() {
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.unread = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on a Warren link",
                    )));
                }
                Some(Ok(Message::Close(_) | Message::Frame(_))) | None => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
        let n = self.unread.len().min(buf.remaining());
        let chunk = self.unread.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsLink<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // A write is reported only once flushed: the driver's writer never flushes, and
        // bytes left in the WebSocket's buffer would otherwise wait for the next write.
        if self.unflushed.is_none() {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
            let n = buf.len().min(MAX_MESSAGE);
            let message = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
            Pin::new(&mut self.ws)
                .start_send(message)
                .map_err(io_error)?;
            self.unflushed = Some(n);
        }
        ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(io_error)?;
        Poll::Ready(Ok(self.unflushed.take().unwrap_or(0)))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(io_error)
    }
}
