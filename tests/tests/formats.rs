//! Output formats against their real consumers: a live agent's OCSF stream (every line
//! validated against OCSF 1.1.0 when it stops), and the Prometheus endpoint parsed by
//! promtool and scraped by a real Prometheus server started on loopback.
// xtask-suite: host-only

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::{python, run, Agent};

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.0 (no chunking): the body, or None when nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let (head, body) = r.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}

#[test]
fn a_live_agents_ocsf_stream_is_valid_ocsf() {
    let mut a = Agent::spawn("ocsf", &["--schema", "ocsf", "--process-events"], &[]).unwrap();
    let d = a.dir("outputs");
    let mark = a.mark();
    let img = d.join("vm.qcow2");
    python(&format!(
        "import os\nf=os.open({:?}, os.O_CREAT|os.O_RDWR)\nos.pwrite(f, b'x'*512, 0)\nos.close(f)\nos.rename({:?}, {:?})",
        img.to_str().unwrap(),
        img.to_str().unwrap(),
        d.join("vm2.qcow2").to_str().unwrap()
    ));
    let hidden = d.join(".stash");
    run("touch", &[hidden.to_str().unwrap()]);
    let finding = a
        .wait_from(mark, Duration::from_secs(30), |v| v["class_uid"] == 2004)
        .expect("a Detection Finding for the hidden file");
    assert_eq!(
        finding["finding_info"]["analytic"]["uid"], "SM-H001",
        "{finding}"
    );
    assert_eq!(
        finding["finding_info"]["attacks"][0]["sub_technique"]["uid"], "T1564.001",
        "{finding}"
    );
    let rename = a
        .wait_from(mark, Duration::from_secs(30), |v| {
            v["class_uid"] == 1001 && v["activity_id"] == 5
        })
        .expect("a File System Activity: Rename");
    assert_eq!(rename["file_result"]["name"], "vm2.qcow2", "{rename}");
    a.wait_from(mark, Duration::from_secs(30), |v| v["class_uid"] == 1007)
        .expect("a Process Activity record");
    // Stopping validates every line the agent wrote (chain records included) as OCSF.
    assert!(a.stop(Duration::from_secs(20)));
    let text = std::fs::read_to_string(&a.out).unwrap();
    assert!(
        text.lines().all(|l| l.contains("\"class_uid\":")),
        "ECS in an OCSF stream"
    );
}

/// Prometheus server binary and promtool: Debian's `prometheus` (`cargo xtask setup`).
struct Prometheus(Child);
impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn query(port: u16, q: &str) -> Value {
    let path = format!(
        "/api/v1/query?query={}",
        q.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    http_get(port, &path)
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null)
}

#[test]
fn the_metrics_endpoint_parses_strictly_and_a_real_prometheus_scrapes_it() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut a = Agent::spawn("prom", &["--metrics", &addr], &[]).unwrap();
    let d = a.dir("outputs");
    python(&format!(
        "open({:?}, 'wb').write(b'y'*64)",
        d.join("m.img").to_str().unwrap()
    ));
    let body = http_get(port, "/metrics").expect("metrics endpoint");
    // promtool: the official parser, strict about grouping, types and label syntax.
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian prometheus; run `cargo xtask setup`)");
    c.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "snapmon_build_info{version=",
        "snapmon_lost_total{source=\"kernel\",cause=\"ringbuf_full\"} 0",
        "snapmon_lost_total{source=\"sinks\",cause=\"queue_full\"} 0",
    ] {
        assert!(body.contains(want), "{want}\n{body}");
    }
    // A real server, on loopback, scraping every second.
    let tmp = a.root.with_extension("prometheus");
    std::fs::create_dir_all(&tmp).unwrap();
    let cfg = tmp.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: snapmon\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let web = free_port();
    let _p = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian prometheus; run `cargo xtask setup`)"),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let build = loop {
        let r = query(web, "snapmon_build_info");
        if r["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped snapmon: {r}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(build["data"]["result"][0]["value"][1], "1", "{build}");
    assert_eq!(
        build["data"]["result"][0]["metric"]["job"], "snapmon",
        "{build}"
    );
    // Every family kept its type through a real scrape (the sink_up samples used to follow
    // another family's TYPE line).
    let meta: Value = http_get(web, "/api/v1/metadata")
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null);
    for (family, ty) in [
        ("snapmon_sink_up", "gauge"),
        ("snapmon_sink_spill_bytes", "gauge"),
        ("snapmon_lost_total", "counter"),
        ("snapmon_events_total", "counter"),
    ] {
        assert_eq!(
            meta["data"][family][0]["type"], ty,
            "{family}: {}",
            meta["data"][family]
        );
    }
    let up = query(web, "snapmon_sink_up");
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    let _ = std::fs::remove_dir_all(&tmp);
}
