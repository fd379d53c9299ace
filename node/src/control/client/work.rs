//! The client side of the `work` commands, as receptorctl drives them: submit with a
//! payload and half-close, results streamed to EOF, and the one-line commands.

use std::collections::BTreeMap;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{Client, ClientError, parse_reply, read_reply_line};
use crate::control::line::PayloadReader;
use crate::control::reply::work::{parse_created_line, parse_streaming_line};
use crate::control::reply::{ERROR_PREFIX, SubmitReply, UnitStatusReply};
use crate::control::request::{Request, WorkRequest};
use crate::work::UnitId;

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Submits a unit of `work_type` to `node` (`localhost`: the node behind the socket)
    /// with `params`, sends `payload` to its end, half-closes and returns the final answer.
    /// The session is over afterwards, so this consumes the client.
    ///
    /// # Errors
    /// See [`ClientError`]; a refused submit is [`ClientError::Remote`].
    pub async fn work_submit<P: AsyncRead + Unpin + ?Sized>(
        mut self,
        node: &str,
        work_type: &str,
        params: BTreeMap<String, String>,
        payload: &mut P,
    ) -> Result<SubmitReply, ClientError> {
        let request = Request::Work(WorkRequest::Submit {
            node: node.to_owned(),
            work_type: work_type.to_owned(),
            params,
            ttl: None,
            signwork: false,
            tls_client: None,
            signature: None,
        });
        self.send_line(&request).await?;
        let line = read_reply_line(&mut self.conn).await?;
        expect_status_line(&line, "Work unit created with ID ...", parse_created_line)?;
        let stream = self.conn.get_mut();
        tokio::io::copy(payload, stream).await?;
        stream.shutdown().await?;
        let line = read_reply_line(&mut self.conn).await?;
        parse_reply(&line)
    }

    /// Every unit on the node, by id.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn work_list(&mut self) -> Result<BTreeMap<String, UnitStatusReply>, ClientError> {
        self.call(&Request::Work(WorkRequest::List { unit: None }))
            .await
    }

    /// One unit's status.
    ///
    /// # Errors
    /// See [`ClientError`]; an unknown unit is [`ClientError::Remote`].
    pub async fn work_status(&mut self, unit: UnitId) -> Result<UnitStatusReply, ClientError> {
        self.call(&Request::Work(WorkRequest::Status { unit }))
            .await
    }

    /// The unit's output from byte `startpos`, following live output; the reader ends when
    /// the node closes the stream (the unit finished). The session is over afterwards, so
    /// this consumes the client.
    ///
    /// # Errors
    /// See [`ClientError`]; an unknown unit is [`ClientError::Remote`].
    pub async fn work_results(
        mut self,
        unit: UnitId,
        startpos: u64,
    ) -> Result<PayloadReader<S>, ClientError> {
        self.send_line(&Request::Work(WorkRequest::Results { unit, startpos }))
            .await?;
        let line = read_reply_line(&mut self.conn).await?;
        expect_status_line(&line, "Streaming results for work unit ...", |l| {
            parse_streaming_line(l)
        })?;
        // As receptorctl does: nothing more to send, and the output may be long.
        self.conn.get_mut().shutdown().await?;
        Ok(self.conn.into_payload_reader())
    }

    /// Cancels a unit; returns the node's verb (`cancelled`, or `cancel pending` from a
    /// Receptor node whose remote unit has not answered yet).
    ///
    /// # Errors
    /// See [`ClientError`]; an unknown unit is [`ClientError::Remote`].
    pub async fn work_cancel(&mut self, unit: UnitId) -> Result<String, ClientError> {
        let request = Request::Work(WorkRequest::Cancel { unit });
        first_key(self.call(&request).await?)
    }

    /// Releases (cancels and deletes) a unit; `force` deletes it even if a remote release
    /// fails. Returns the node's verb (`released` or `release pending`).
    ///
    /// # Errors
    /// See [`ClientError`]; an unknown unit is [`ClientError::Remote`].
    pub async fn work_release(&mut self, unit: UnitId, force: bool) -> Result<String, ClientError> {
        let request = Request::Work(WorkRequest::Release { unit, force });
        first_key(self.call(&request).await?)
    }

    async fn send_line(&mut self, request: &Request) -> Result<(), ClientError> {
        let mut line = request.to_json();
        line.push('\n');
        let stream = self.conn.get_mut();
        stream.write_all(line.as_bytes()).await?;
        stream.flush().await?;
        Ok(())
    }
}

/// Checks a streaming exchange's status line: `ERROR:` is [`ClientError::Remote`],
/// anything `parse` rejects is [`ClientError::UnexpectedLine`].
fn expect_status_line(
    line: &str,
    expected: &'static str,
    parse: impl Fn(&str) -> Option<&str>,
) -> Result<(), ClientError> {
    if let Some(message) = line.strip_prefix(ERROR_PREFIX) {
        return Err(ClientError::Remote {
            message: message.to_owned(),
        });
    }
    match parse(line) {
        Some(_) => Ok(()),
        None => Err(ClientError::UnexpectedLine {
            expected,
            line: line.to_owned(),
        }),
    }
}

/// The verb of a one-entry `{"<verb>":"<id>"}` acknowledgement.
fn first_key(reply: BTreeMap<String, String>) -> Result<String, ClientError> {
    reply
        .into_keys()
        .next()
        .ok_or_else(|| ClientError::UnexpectedLine {
            expected: "a one-entry object",
            line: "{}".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, DuplexStream, duplex};

    use super::*;
    use crate::control::fake::FakeBackend;
    use crate::control::serve_session;

    async fn connect(backend: &Arc<FakeBackend>) -> Client<DuplexStream> {
        let (client, server) = duplex(1 << 16);
        let backend = Arc::clone(backend);
        tokio::spawn(async move { serve_session(server, &*backend).await });
        Client::handshake(client).await.unwrap()
    }

    #[tokio::test]
    async fn submits_follows_and_manages_units() {
        let backend = Arc::new(FakeBackend::new());
        let params = BTreeMap::from([("params".to_owned(), "-v".to_owned())]);
        let client = connect(&backend).await;
        let submitted = client
            .work_submit("localhost", "fail", params, &mut &b"out\n"[..])
            .await
            .unwrap();
        assert_eq!(submitted.result, "Job Started");
        let unit = submitted.unit_id;

        let mut output = Vec::new();
        let mut results = connect(&backend).await.work_results(unit, 1).await.unwrap();
        results.read_to_end(&mut output).await.unwrap();
        assert_eq!(output, b"ut\n");

        let mut client = connect(&backend).await;
        let status = client.work_status(unit).await.unwrap();
        assert!(status.is_failed());
        assert_eq!(status.detail, "exit status 1");
        let units = client.work_list().await.unwrap();
        assert_eq!(units.keys().collect::<Vec<_>>(), [&unit.to_string()]);
        assert_eq!(client.work_cancel(unit).await.unwrap(), "cancelled");
        assert_eq!(client.work_release(unit, true).await.unwrap(), "released");
        match client.work_status(unit).await {
            Err(ClientError::Remote { message }) => {
                assert_eq!(message, format!("unknown work unit {unit}"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn refusals_are_remote_errors() {
        let backend = Arc::new(FakeBackend::new());
        let client = connect(&backend).await;
        let refused = client
            .work_submit("localhost", "nosuch", BTreeMap::new(), &mut &b""[..])
            .await;
        match refused {
            Err(ClientError::Remote { message }) => {
                assert_eq!(message, "node a does not offer work type nosuch")
            }
            other => panic!("{other:?}"),
        }
        let unit: UnitId = "Zz0Zz0Zz".parse().unwrap();
        let missing = connect(&backend).await.work_results(unit, 0).await;
        assert!(matches!(missing, Err(ClientError::Remote { .. })));
    }

    #[test]
    fn status_lines_are_checked() {
        let err = expect_status_line("Hello", "x", parse_created_line).unwrap_err();
        assert!(matches!(err, ClientError::UnexpectedLine { .. }));
        let err = expect_status_line("ERROR: no", "x", parse_created_line).unwrap_err();
        assert!(matches!(err, ClientError::Remote { message } if message == "no"));
    }
}
