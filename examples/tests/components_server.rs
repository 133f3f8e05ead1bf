//! End to end against the real binary: `serve` with `append`, `get`, `dump` and `verify`; bad
//! lines, a wrong token, garbage and oversize frames; and a client appending through a server
//! `kill -9` and restart, after which every command is acknowledged once and applied once.

mod common;

use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, run, Served};

#[test]
fn serve_append_get_dump_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let served = Served::start(&dir.path().join("data"), "127.0.0.1:0", Some("sesame"));
    let server = served.address.as_str();
    let input = [
        r#"{"op":"create","id":"a","parent":null,"attrs":{"k":"v"}}"#,
        r#"{"op":"create","id":"b","parent":"a"}"#,
        "this is not json",
        r#"{"op":"create","id":"c","parent":"missing"}"#,
        r#"{"op":"update","id":"a","attrs":{"k":"w"},"if_version":1}"#,
        r#"{"op":"reparent","id":"a","parent":"b"}"#,
    ]
    .join("\n");
    let (code, stdout, stderr) = run(
        &["append", "--server", server, "--token", "sesame", "--wait"],
        &input,
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(code, 1, "a bad line makes the exit status 1: {stderr}");
    assert_eq!(lines.len(), 6, "one line out per line in: {stdout}");
    assert_eq!(lines[0]["outcome"], "applied");
    assert_eq!(lines[1]["outcome"], "applied");
    assert_eq!(lines[2]["ok"], false);
    assert!(lines[2]["error"]
        .as_str()
        .is_some_and(|e| e.contains("bad command")));
    assert_eq!(lines[3]["reason"], "parent_missing");
    assert_eq!(lines[4]["outcome"], "applied");
    assert_eq!(lines[5]["reason"], "would_create_cycle");
    assert!(lines[5]["batch"].as_u64().is_some());

    let (code, stdout, _) = run(&["get", "a", "--server", server, "--token", "sesame"], "");
    assert_eq!(code, 0);
    let a: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(a["version"], 2);
    assert_eq!(a["children"], serde_json::json!(["b"]));
    assert_eq!(a["attrs"]["k"], "w");
    let (code, _, _) = run(
        &["get", "nobody", "--server", server, "--token", "sesame"],
        "",
    );
    assert_eq!(code, 1);

    let (code, stdout, _) = run(&["dump", "--server", server, "--token", "sesame"], "");
    assert_eq!(code, 0);
    let dump: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(dump[0]["components"], 2);
    let ids: Vec<&str> = dump[1..].iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, vec!["a", "b"]);

    let (code, stdout, _) = run(&["verify", "--server", server, "--token", "sesame"], "");
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.starts_with("ok: 2 components"), "{stdout}");

    // A wrong token is refused, with a message and no panic.
    let (code, _, stderr) = run(&["dump", "--server", server, "--token", "wrong"], "");
    assert_ne!(code, 0);
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Garbage and an oversize frame get an error reply and a closed connection...
    for bytes in [&[0u8, 0, 0, 3, 1, 2, 3][..], &u32::MAX.to_be_bytes()[..]] {
        let mut raw = TcpStream::connect(server).expect("connect");
        raw.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        raw.write_all(bytes).expect("write");
        let mut reply = Vec::new();
        let _ = raw.read_to_end(&mut reply);
        assert!(!reply.is_empty(), "no error reply");
    }
    // ... and the server keeps serving everyone else.
    let (code, _, _) = run(&["get", "b", "--server", server, "--token", "sesame"], "");
    assert_eq!(code, 0);

    // SIGTERM shuts it down cleanly.
    let mut served = served;
    let terminated = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(terminated.success());
    let status = served.child.wait().expect("wait");
    assert!(status.success(), "serve exited with {status}");
}

#[test]
fn appends_through_kill_nine_and_restart_are_applied_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let served = Served::start(&data, "127.0.0.1:0", None);
    let address = served.address.clone();

    let mut client = bin()
        .args([
            "append",
            "--server",
            &address,
            "--wait",
            "--retry-for",
            "60",
        ])
        .env_remove("LOCKSTEP_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn append");
    let mut stdin = client.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(client.stdout.take().expect("stdout"));
    let mut answers = Vec::new();
    let mut send = |line: &str, answers: &mut Vec<serde_json::Value>| {
        writeln!(stdin, "{line}").expect("write");
        stdin.flush().expect("flush");
        let mut answer = String::new();
        stdout.read_line(&mut answer).expect("read answer");
        answers.push(serde_json::from_str(answer.trim()).expect("json answer"));
    };
    send(r#"{"op":"create","id":"x"}"#, &mut answers);
    let updates = 60;
    let mut served = Some(served);
    for i in 0..updates {
        if i == 20 || i == 40 {
            // Kill the server without warning and bring it back on the same address, while the
            // client is mid-stream.
            if let Some(old) = served.take() {
                old.kill_nine();
            }
            served = Some(Served::start(&data, &address, None));
        }
        send(
            &format!(r#"{{"op":"update","id":"x","attrs":{{"n":"{i}"}}}}"#),
            &mut answers,
        );
    }
    drop(stdin);
    let status = client.wait().expect("client exit");
    assert!(status.success());
    assert_eq!(answers.len(), updates + 1, "one answer per command");
    assert!(
        answers
            .iter()
            .all(|a| a["ok"] == true && a["outcome"] == "applied"),
        "{answers:?}"
    );

    let (code, stdout, _) = run(&["get", "x", "--server", &address], "");
    assert_eq!(code, 0);
    let x: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(
        x["version"],
        updates as u64 + 1,
        "every update applied exactly once"
    );
    assert_eq!(x["attrs"]["n"], format!("{}", updates - 1));
    let (code, stdout, _) = run(&["verify", "--server", &address], "");
    assert_eq!(code, 0, "{stdout}");
}
