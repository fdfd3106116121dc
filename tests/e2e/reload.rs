//! Hot reload under traffic: endpoints and services added and removed while connections run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const LONG_LIVED: usize = 200;
const SHORT_WORKERS: usize = 8;
const SHORT_PER_WORKER: usize = 100;
const SWAPS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_a_thousand_connections_lose_nothing() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        Backend::start("d").await,
    ];
    let web = frontend();
    let other = frontend();
    let other_backend = Backend::start("other").await;
    let dir = TempDir::new("reload-load");
    let config_for = |swap: usize| {
        // Rotate which backends are listed (always two or more), toggle a second service.
        let listed: Vec<_> = backends
            .iter()
            .enumerate()
            .filter(|(i, _)| !(i + swap).is_multiple_of(4))
            .map(|(_, b)| b.addr)
            .collect();
        let mut text = config_one("web", web, &listed, "    balance: least-connections\n");
        if swap % 2 == 1 {
            text.push_str(&format!(
                "  other:\n    listen: '{other}'\n    backends: ['{}']\n",
                other_backend.addr
            ));
        }
        text
    };
    let config = dir.write("capstan.yaml", &config_for(0));
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    capstan.wait_listening(web);

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..LONG_LIVED {
        let (stop, failures, completed) = (stop.clone(), failures.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            let result: std::io::Result<()> = async {
                let (mut stream, _) = greet(web, None).await?;
                let message = format!("long-lived {i:05}\n");
                while !stop.load(Ordering::Relaxed) {
                    stream.write_all(message.as_bytes()).await?;
                    let mut echo = vec![0u8; message.len()];
                    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
                        .await??;
                    if echo != message.as_bytes() {
                        return Err(std::io::Error::other("corrupted echo"));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                stream.shutdown().await?;
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await?;
                Ok(())
            }
            .await;
            match result {
                Ok(()) => completed.fetch_add(1, Ordering::Relaxed),
                Err(error) => {
                    eprintln!("long-lived {i}: {error}");
                    failures.fetch_add(1, Ordering::Relaxed)
                }
            };
        }));
    }
    for worker in 0..SHORT_WORKERS {
        let (failures, completed) = (failures.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..SHORT_PER_WORKER {
                match exchange(web, format!("short {worker} {n}").as_bytes()).await {
                    Ok(_) => completed.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        eprintln!("short {worker}/{n}: {error}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }

    let first = capstan.generation();
    for swap in 1..=SWAPS {
        let before = capstan.generation();
        dir.write("capstan.yaml", &config_for(swap));
        eventually(Duration::from_secs(5), || {
            (capstan.generation() > before).then_some(())
        })
        .unwrap_or_else(|| panic!("swap {swap} not applied:\n{}", capstan.logs()));
        if swap % 2 == 1 {
            capstan.wait_listening(other);
            assert_eq!(
                exchange(other, b"x").await.expect("new service serves"),
                "other"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "{}", capstan.logs());
    assert_eq!(
        completed.load(Ordering::Relaxed),
        LONG_LIVED + SHORT_WORKERS * SHORT_PER_WORKER
    );
    assert!(capstan.generation() >= first + SWAPS as u64);
    // Every connection closed: nothing leaked, every gauge back to zero.
    eventually(Duration::from_secs(5), || {
        let snapshot = capstan.snapshot();
        let services = snapshot["services"].as_array()?.clone();
        services
            .iter()
            .all(|s| {
                s["active_connections"] == 0
                    && s["endpoints"]
                        .as_array()
                        .is_some_and(|e| e.iter().all(|e| e["active_connections"] == 0))
            })
            .then_some(())
    })
    .unwrap_or_else(|| panic!("gauges not back to zero: {:#}", capstan.snapshot()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_service_closes_its_listener_but_not_its_connections() {
    let backend = Backend::start("a").await;
    let keep = Backend::start("keep").await;
    let gone = frontend();
    let stays = frontend();
    let dir = TempDir::new("remove");
    let both = format!(
        "{}  stays:\n    listen: '{stays}'\n    backends: ['{}']\n",
        config_one("gone", gone, &[backend.addr], ""),
        keep.addr
    );
    let config = dir.write("capstan.yaml", &both);
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    capstan.wait_listening(gone);
    capstan.wait_listening(stays);
    let (mut open, _) = greet(gone, None).await.expect("greet");
    let (mut other, _) = greet(stays, None).await.expect("greet");

    let only = format!(
        "services:\n  stays:\n    listen: '{stays}'\n    backends: ['{}']\n",
        keep.addr
    );
    dir.write("capstan.yaml", &only);
    eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect_timeout(&gone, Duration::from_millis(200))
            .is_err()
            .then_some(())
    })
    .expect("listener closed: connection refused");
    for stream in [&mut open, &mut other] {
        stream.write_all(b"survived").await.expect("write");
        let mut echo = [0u8; 8];
        stream
            .read_exact(&mut echo)
            .await
            .expect("connection survived the swap");
        assert_eq!(&echo, b"survived");
    }
    assert_eq!(exchange(stays, b"x").await.expect("served"), "keep");
}
