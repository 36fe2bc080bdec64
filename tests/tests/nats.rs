//! The NATS JetStream sink against a real 3-node JetStream cluster on loopback (Debian's
//! nats-server 2.9, each node with its own ports and store, started by the test) and an R3
//! stream. While the live agent reports real file writes, the test kills the stream leader
//! (SIGKILL) and restarts it, then stops the whole cluster for 10 s and brings it back. Every
//! record the agent wrote to its file sink must be in the stream exactly once (the stream
//! de-duplicates on `Nats-Msg-Id` = `event.id`), and the agent's metrics must show the outage.
// xtask-suite: host-only

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use serde_json::Value;
use snapmon_e2e::{
    counter, eventually, free_port, metrics, python, series, sink_counters, stopped_record, Agent,
};

const STREAM: &str = "SNAPMON_E2E";

struct Node {
    name: String,
    port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        assert!(self.child.is_none());
        let c = Command::new("nats-server")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is missing: run `cargo xtask setup`");
        self.child = Some(c);
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three JetStream nodes routed to each other, each with its own store under `dir`.
fn cluster(dir: &Path) -> Vec<Node> {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    (0..3)
        .map(|i| {
            let name = format!("n{i}");
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats-route://127.0.0.1:{}", p.1))
                .collect();
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\ncluster {{\n  name: snapmon-e2e\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    ports[i].0,
                    dir.join(&name).display(),
                    ports[i].1,
                    routes.join(", ")
                ),
            )
            .unwrap();
            let mut n = Node {
                name,
                port: ports[i].0,
                conf,
                child: None,
            };
            n.start();
            n
        })
        .collect()
}

/// Some file writes the agent reports (one event each, plus the state records around them).
fn writes(dir: &Path, tag: &str, n: usize) {
    let f = dir.join(format!("nats-{tag}.raw"));
    python(&format!(
        "import os, time\nfd=os.open({:?}, os.O_RDWR|os.O_CREAT)\nfor i in range({n}):\n    os.pwrite(fd, b'x', i)\n    time.sleep(0.01)",
        f.to_str().unwrap()
    ));
}

#[test]
fn every_record_reaches_an_r3_stream_once_across_a_leader_kill_and_a_cluster_outage() {
    let work = std::env::temp_dir().join(format!("snapmon-nats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let mut nodes = cluster(&work);
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = rt
        .block_on(
            async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .connect(urls.as_slice()),
        )
        .unwrap();
    let _in_rt = rt.enter();
    let js = jetstream::new(client);
    // The meta leader takes a few seconds to be elected.
    eventually(Duration::from_secs(60), "an R3 stream", || {
        rt.block_on(js.get_or_create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["snapmon.>".into()],
            num_replicas: 3,
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        }))
        .map(drop)
        .map_err(|e| e.to_string())
    });
    let leader = || -> Result<String, String> {
        let mut s = rt
            .block_on(js.get_stream(STREAM))
            .map_err(|e| e.to_string())?;
        let info = rt.block_on(s.info()).map_err(|e| e.to_string())?;
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .ok_or_else(|| "no leader".to_string())
    };
    eventually(Duration::from_secs(30), "a stream leader", leader);

    let mport = free_port();
    let spec = format!(
        "nats:{},server={},server={},stream={STREAM},write_timeout=2s,backoff_min=100ms,backoff_max=1s,spill_dir={}",
        urls[0],
        urls[1],
        urls[2],
        work.join("spill").display()
    );
    let mut agent = Agent::spawn(
        "nats",
        &[
            "--sink",
            &spec,
            "--metrics",
            &format!("127.0.0.1:{mport}"),
            "--stats-interval",
            "1",
        ],
        &[],
    )
    .expect("agent with a nats sink");
    let sink = format!("nats:{}", urls[0]);
    let up = format!("snapmon_sink_up{{sink=\"{sink}\",");
    let spill = format!("snapmon_sink_spill_bytes{{sink=\"{sink}\"}}");
    let dir = agent.dir("outputs");
    assert_eq!(
        series(&metrics(mport), &up),
        Some(1.0),
        "{}",
        metrics(mport)
    );
    writes(&dir, "a", 30);

    // The stream leader dies mid-run, and comes back.
    let name = leader().unwrap();
    let i = nodes.iter().position(|n| n.name == name).unwrap();
    nodes[i].kill();
    writes(&dir, "b", 30);
    std::thread::sleep(Duration::from_secs(2));
    nodes[i].start();
    eventually(Duration::from_secs(180), "a stream leader again", leader);
    writes(&dir, "c", 30);

    // The whole cluster is away for 10 s: the agent spills and says so.
    for n in &mut nodes {
        n.kill();
    }
    let down_at = Instant::now();
    writes(&dir, "d", 30);
    let outage = eventually(Duration::from_secs(30), "the outage in the metrics", || {
        let body = metrics(mport);
        match (series(&body, &up), series(&body, &spill)) {
            (Some(u), Some(s)) if u == 0.0 && s > 0.0 => Ok(body),
            _ => Err(body),
        }
    });
    assert!(
        outage.contains("state=\"disconnected") || outage.contains("state=\"connecting"),
        "{outage}"
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down_at.elapsed()));
    for n in &mut nodes {
        n.start();
    }
    writes(&dir, "e", 30);
    eventually(
        Duration::from_secs(300),
        "the spill to drain into the stream",
        || {
            let body = metrics(mport);
            match (series(&body, &up), series(&body, &spill)) {
                (Some(u), Some(s)) if u == 1.0 && s == 0.0 => Ok(()),
                _ => Err(body),
            }
        },
    );
    assert!(agent.stop(Duration::from_secs(20)), "agent did not stop");

    // The file sink's records (those with an id; the chain's own lines have none) …
    let written: Vec<Value> = agent
        .records()
        .into_iter()
        .filter(|v| v["event"]["id"].is_string())
        .collect();
    let st = sink_counters(stopped_record(&written), &sink);
    assert!(
        counter(st, "disconnects") >= 1,
        "the outage is not counted: {st}"
    );
    assert_eq!(counter(st, "dropped"), 0, "{st}");
    // … against the stream, read back in full.
    let mut stream = eventually(
        Duration::from_secs(60),
        "the stream after the restart",
        || {
            rt.block_on(js.get_stream(STREAM))
                .map_err(|e| e.to_string())
        },
    );
    let last = eventually(Duration::from_secs(30), "stream info", || {
        rt.block_on(stream.info())
            .map(|i| i.state.last_sequence)
            .map_err(|e| e.to_string())
    });
    let mut in_stream: HashMap<String, u32> = HashMap::new();
    for seq in 1..=last {
        let m = eventually(Duration::from_secs(30), "a stream message", || {
            rt.block_on(stream.get_raw_message(seq))
                .map_err(|e| e.to_string())
        });
        let v: Value = serde_json::from_slice(&m.payload).expect("JSON payload");
        let id = v["event"]["id"].as_str().unwrap().to_string();
        let hdr = m.headers.get("Nats-Msg-Id").map(|h| h.as_str().to_string());
        assert_eq!(
            hdr.as_deref(),
            Some(id.as_str()),
            "Nats-Msg-Id is the record id"
        );
        let kind = v["event"]["kind"].as_str().unwrap();
        assert!(
            m.subject.ends_with(&format!(".{kind}")) && m.subject.starts_with("snapmon."),
            "{} for a {kind}",
            m.subject
        );
        *in_stream.entry(id).or_default() += 1;
    }
    let dups: Vec<_> = in_stream.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<&str> = written
        .iter()
        .map(|v| v["event"]["id"].as_str().unwrap())
        .filter(|id| !in_stream.contains_key(*id))
        .collect();
    eprintln!(
        "nats: {} records in the file sink, {} messages in the stream, {} duplicated, {} missing",
        written.len(),
        last,
        dups.len(),
        missing.len()
    );
    assert!(dups.is_empty(), "duplicates in the stream: {dups:?}");
    let brief = |id: &&str| {
        written
            .iter()
            .find(|v| v["event"]["id"] == *id)
            .map(|v| format!("{id} {}", v["event"]["action"]))
            .unwrap_or_default()
    };
    // The last records (the stopped record) may miss the 3 s the sink has at shutdown only if
    // the cluster is slow; everything before them must be there.
    assert!(
        missing.is_empty(),
        "in the file sink but not in the stream: {:?}",
        missing.iter().map(brief).collect::<Vec<_>>()
    );
    // Every event write of each phase made it.
    for tag in ["a", "b", "c", "d", "e"] {
        let n = written
            .iter()
            .filter(|v| {
                v["file"]["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!("nats-{tag}.raw")))
            })
            .count();
        assert!(n >= 30, "phase {tag}: {n} events in the file sink");
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(&work);
}
