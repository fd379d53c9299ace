//! The session side of the `work` commands: local-versus-remote checks, the submit and
//! results exchanges on the connection, and the one-line answers.
//!
//! Receptor's `work submit` reads the payload until the client half-closes and then the
//! session ends; `work results` streams output and then closes the connection.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{self, AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{Backend, LineReader, Outcome, WorkCreate, send};
use crate::control::goformat::parse_go_duration;
use crate::control::reply::work::{created_line, streaming_line};
use crate::control::reply::{Reply, UnitStatusReply, WorkReply};
use crate::control::request::WorkRequest;
use crate::work::{UnitId, WorkError};

/// Runs one `work` request.
///
/// # Errors
/// Read or write errors on the connection.
pub(super) async fn handle<B: Backend, S: AsyncRead + AsyncWrite + Unpin + Send>(
    request: WorkRequest,
    backend: &B,
    conn: &mut LineReader<S>,
) -> io::Result<Outcome> {
    let reply = match request {
        WorkRequest::Submit {
            node,
            work_type,
            params,
            ttl,
            signature,
            signwork,
            ..
        } => {
            let submit = Submit {
                node,
                work_type,
                params,
                ttl,
                signature,
                signwork,
            };
            return submit.run(backend, conn).await;
        }
        WorkRequest::Results { unit, startpos } => {
            return results(backend, conn, unit, startpos).await;
        }
        WorkRequest::List { unit } => list(backend, unit).await,
        WorkRequest::Status { unit } => backend
            .work_status(unit)
            .await
            .map(|status| WorkReply::Status((&status).into())),
        WorkRequest::Cancel { unit } => backend
            .work_cancel(unit)
            .await
            .map(|()| WorkReply::Cancelled(unit)),
        WorkRequest::Release { unit, force } => backend
            .work_release(unit, force)
            .await
            .map(|()| WorkReply::Released(unit)),
    };
    Ok(Outcome::Reply(answer(reply)))
}

fn answer(result: Result<WorkReply, WorkError>) -> Reply {
    match result {
        Ok(reply) => Reply::Work(reply),
        Err(e) => {
            tracing::debug!(error = %e, "work request failed");
            Reply::Error(e.to_string())
        }
    }
}

/// The parts of a submit this node acts on.
struct Submit {
    node: String,
    work_type: String,
    params: BTreeMap<String, String>,
    ttl: Option<String>,
    signature: Option<String>,
    signwork: bool,
}

impl Submit {
    /// Receptor's submit exchange: create the unit (errors end here and the session goes
    /// on), announce its id, read the payload to EOF, start it, answer, end the session.
    async fn run<B: Backend, S: AsyncRead + AsyncWrite + Unpin + Send>(
        self,
        backend: &B,
        conn: &mut LineReader<S>,
    ) -> io::Result<Outcome> {
        let ttl = match self.check(&backend.node_id().to_string()) {
            Ok(ttl) => ttl,
            Err(refused) => return Ok(Outcome::Reply(Reply::Error(refused))),
        };
        let request = WorkCreate {
            node: self.node,
            work_type: self.work_type,
            params: self.params,
            ttl,
            sign_work: self.signwork,
        };
        let unit = match backend.work_create(request).await {
            Ok(unit) => unit,
            Err(e) => return Ok(Outcome::Reply(Reply::Error(e.to_string()))),
        };
        send(conn, &created_line(&unit)).await?;
        let started = backend.work_start(unit, conn.reader()).await;
        tracing::debug!(%unit, ok = started.is_ok(), "work unit submitted");
        // The payload ran to EOF (or was refused part-way): nothing after it is a request.
        Ok(Outcome::ReplyAndEnd(answer(
            started.map(|()| WorkReply::Started(unit)),
        )))
    }

    /// Refuses what this node cannot do before anything is created; returns the `ttl`.
    fn check(&self, own_id: &str) -> Result<Option<Duration>, String> {
        // Warren's work types never verify signatures (Receptor's answer when a type does
        // not expect one).
        if self.signature.is_some() {
            return Err("work type did not expect a signature".to_owned());
        }
        let local = self.node.eq_ignore_ascii_case("localhost") || self.node == own_id;
        let Some(ttl) = &self.ttl else {
            return Ok(None);
        };
        if local {
            return Err("ttl option is intended for remote work only".to_owned());
        }
        parse_go_duration(ttl)
            .map(Some)
            .ok_or_else(|| format!("time: invalid duration \"{ttl}\""))
    }
}

/// `work list [unit]`: one unit's status (or its error), or every unit's.
async fn list<B: Backend>(backend: &B, unit: Option<UnitId>) -> Result<WorkReply, WorkError> {
    let units = match unit {
        Some(unit) => vec![(unit, backend.work_status(unit).await?)],
        None => backend.work_list().await?,
    };
    Ok(WorkReply::List(
        units
            .iter()
            .map(|(id, status)| (*id, UnitStatusReply::from(status)))
            .collect(),
    ))
}

/// `work results`: the status line, the output from `startpos` until the unit is done,
/// then the connection is closed, as Receptor does. An unknown unit is an `ERROR:` line
/// and the session goes on.
async fn results<B: Backend, S: AsyncRead + AsyncWrite + Unpin + Send>(
    backend: &B,
    conn: &mut LineReader<S>,
    unit: UnitId,
    startpos: u64,
) -> io::Result<Outcome> {
    let mut output = match backend.work_results(unit, startpos).await {
        Ok(output) => output,
        Err(e) => return Ok(Outcome::Reply(Reply::Error(e.to_string()))),
    };
    send(conn, &streaming_line(&unit)).await?;
    let stream = conn.get_mut();
    let sent = io::copy(&mut output, stream).await?;
    tracing::debug!(%unit, startpos, sent, "work results streamed");
    stream.shutdown().await?;
    Ok(Outcome::End)
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::control::fake::FakeBackend;
    use crate::control::line::LineEnd;
    use crate::control::serve_session;

    const GREETING: &str = "Receptor Control, node a\n";

    /// Sends `input`, half-closes, and returns everything the session wrote.
    async fn run_with(backend: &FakeBackend, input: &[u8]) -> String {
        let (mut client, server) = io::duplex(1 << 20);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        serve_session(server, backend).await.unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        out
    }

    fn submit_line(worktype: &str) -> String {
        format!(
            r#"{{"command":"work","subcommand":"submit","node":"localhost","worktype":"{worktype}"}}"#
        ) + "\n"
    }

    /// Submits `payload` as an `echo` unit and returns its id.
    async fn submit(backend: &FakeBackend, payload: &[u8]) -> UnitId {
        let input = [submit_line("echo").as_bytes(), payload].concat();
        let out = run_with(backend, &input).await;
        let lines: Vec<&str> = out.lines().collect();
        let id = lines[1]
            .strip_prefix("Work unit created with ID ")
            .and_then(|rest| rest.strip_suffix(". Send stdin data and EOF."))
            .unwrap();
        assert_eq!(
            lines[2],
            format!(r#"{{"result":"Job Started","unitid":"{id}"}}"#)
        );
        assert_eq!(lines.len(), 3, "{out}");
        id.parse().unwrap()
    }

    #[tokio::test]
    async fn submit_keeps_payload_bytes_sent_with_the_request_line() {
        let backend = FakeBackend::new();
        // Request line and payload arrive in one write, so in the same read.
        let id = submit(&backend, b"line one\nwork cancel x\n\x00\xff").await;
        assert_eq!(backend.stdin_of(id), b"line one\nwork cancel x\n\x00\xff");
    }

    #[tokio::test]
    async fn submit_reads_payload_until_half_close_then_ends() {
        let backend = FakeBackend::new();
        let (client, server) = io::duplex(64);
        let session = tokio::spawn(async move {
            let backend = backend;
            serve_session(server, &backend).await.unwrap();
            backend
        });
        let mut client = LineReader::new(client);
        let mut line = Vec::new();
        client.read_line(&mut line).await.unwrap();
        client
            .get_mut()
            .write_all(b"work submit localhost echo -x y\n")
            .await
            .unwrap();
        client.read_line(&mut line).await.unwrap();
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(text.ends_with(". Send stdin data and EOF."), "{text}");
        for chunk in [&b"part 1, "[..], b"part 2"] {
            client.get_mut().write_all(chunk).await.unwrap();
        }
        client.get_mut().shutdown().await.unwrap();
        client.read_line(&mut line).await.unwrap();
        assert!(line.starts_with(br#"{"result":"Job Started""#));
        assert_eq!(client.read_line(&mut line).await.unwrap(), LineEnd::Eof);
        let backend = session.await.unwrap();
        let (id, status) = backend.work_list().await.unwrap().remove(0);
        assert_eq!(backend.stdin_of(id), b"part 1, part 2");
        assert_eq!(status.params["params"], "-x y");
    }

    #[tokio::test]
    async fn submit_refusals_leave_the_session_usable() {
        let backend = FakeBackend::new();
        let submit_with = |extra: &str| {
            format!(
                r#"{{"command":"work","subcommand":"submit","node":"localhost","worktype":"echo"{extra}}}"#
            ) + "\n"
        };
        let input = [
            submit_line("nosuch"),
            submit_with(r#","ttl":"1m""#),
            submit_with(r#","count":3"#),
            submit_with(r#","signature":"jwt""#),
            r#"{"command":"work","subcommand":"submit","node":"b","worktype":"echo","ttl":"soon"}"#
                .to_owned()
                + "\n",
            "work list\n".to_owned(),
        ]
        .concat();
        let out = run_with(&backend, input.as_bytes()).await;
        let want = [
            GREETING,
            "ERROR: node a does not offer work type nosuch\n",
            "ERROR: ttl option is intended for remote work only\n",
            "ERROR: submit parameters must all be strings and count is not\n",
            "ERROR: work type did not expect a signature\n",
            "ERROR: time: invalid duration \"soon\"\n",
            "{}\n",
        ]
        .concat();
        assert_eq!(out, want);
    }

    #[tokio::test]
    async fn own_node_id_counts_as_local() {
        let backend = FakeBackend::new();
        let out = run_with(&backend, b"work submit a echo\nhello").await;
        assert!(out.contains(r#"{"result":"Job Started""#), "{out}");
        let out = run_with(&backend, b"work submit LOCALHOST echo\n").await;
        assert!(out.contains(r#"{"result":"Job Started""#), "{out}");
    }

    #[tokio::test]
    async fn a_failed_start_is_an_error_line_and_ends_the_session() {
        let backend = FakeBackend::new();
        let input = [submit_line("nostart").as_bytes(), b"payload"].concat();
        let out = run_with(&backend, &input).await;
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[1].starts_with("Work unit created with ID "));
        assert_eq!(lines[2], "ERROR: Error starting worker: no runner");
        assert_eq!(lines.len(), 3);
    }

    #[tokio::test]
    async fn answers_status_list_cancel_and_release_on_one_connection() {
        let backend = FakeBackend::new();
        let id = submit(&backend, b"hello").await;
        let input = format!(
            "work status {id}\nwork list {id}\nwork list\nwork cancel {id}\n\
             {{\"command\":\"work\",\"subcommand\":\"status\",\"unitid\":\"{id}\"}}\n\
             work release {id}\nwork status {id}\nwork force-release {id}\nwork list\n"
        );
        let out = run_with(&backend, input.as_bytes()).await;
        let lines: Vec<&str> = out.lines().collect();
        let done = r#"{"Detail":"exit status 0","ExtraData":{"Submitter":"a"},"State":2,"StateName":"Succeeded","StdoutSize":5,"WorkType":"echo"}"#;
        assert_eq!(lines[1], done);
        assert_eq!(lines[2], format!(r#"{{"{id}":{done}}}"#));
        assert_eq!(lines[3], lines[2]);
        assert_eq!(lines[4], format!(r#"{{"cancelled":"{id}"}}"#));
        // Cancelling a finished unit leaves its state alone.
        assert_eq!(lines[5], done);
        assert_eq!(lines[6], format!(r#"{{"released":"{id}"}}"#));
        assert_eq!(lines[7], format!("ERROR: unknown work unit {id}"));
        assert_eq!(lines[8], format!("ERROR: unknown work unit {id}"));
        assert_eq!(lines[9], "{}");
        assert_eq!(lines.len(), 10);
    }

    #[tokio::test]
    async fn results_stream_raw_bytes_then_close() {
        let backend = FakeBackend::new();
        let id = submit(&backend, b"0123456789\x00\xff").await;
        let (mut client, server) = io::duplex(1 << 16);
        client
            .write_all(format!("work results {id} 4\nwork status {id}\n").as_bytes())
            .await
            .unwrap();
        // No half-close: the server must close on its own once the output is sent.
        serve_session(server, &backend).await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        let want = format!("{GREETING}Streaming results for work unit {id}\n");
        assert_eq!(out, [want.as_bytes(), b"456789\x00\xff"].concat());
    }

    #[tokio::test]
    async fn results_for_an_unknown_unit_is_an_error_and_the_session_goes_on() {
        let backend = FakeBackend::new();
        let input = concat!(
            "work results Zz0Zz0Zz\n",
            r#"{"command":"work","subcommand":"results","unitid":"Zz0Zz0Zz"}"#,
            "\nwork bogus\nwork status short\nwork list\n"
        );
        let out = run_with(&backend, input.as_bytes()).await;
        let want = [
            GREETING,
            "ERROR: unknown work unit Zz0Zz0Zz\n",
            "ERROR: field startpos missing\n",
            "ERROR: bad command\n",
            "ERROR: unknown work unit short (unit id \"short\" has 5 bytes, expected 8)\n",
            "{}\n",
        ]
        .concat();
        assert_eq!(out, want);
    }

    #[tokio::test]
    async fn streams_live_output_until_the_unit_finishes() {
        let backend = FakeBackend::new();
        let (mut writer, output) = io::duplex(64);
        let id = backend.add_live_unit(output);
        let (client, server) = io::duplex(1 << 16);
        let session = tokio::spawn(async move {
            serve_session(server, &backend).await.unwrap();
        });
        let mut client = LineReader::new(client);
        let mut line = Vec::new();
        client.read_line(&mut line).await.unwrap();
        let request = format!("work results {id}\n");
        client
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        client.get_mut().shutdown().await.unwrap();
        client.read_line(&mut line).await.unwrap();
        assert_eq!(
            line,
            format!("Streaming results for work unit {id}").as_bytes()
        );
        writer.write_all(b"first\n").await.unwrap();
        client.read_line(&mut line).await.unwrap();
        assert_eq!(line, b"first");
        writer.write_all(b"last").await.unwrap();
        drop(writer);
        let mut rest = Vec::new();
        client.reader().read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"last");
        session.await.unwrap();
    }
}
