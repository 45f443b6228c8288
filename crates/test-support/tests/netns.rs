//! The simulated hosts and their faults, against the real kernel: a vanished host times out
//! (no reset), a one-way drop blocks one direction only, a reject refuses at once, every fault
//! heals when its guard drops, and nothing outlives the `Net`.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use pgha_test_support::netns::Net;

/// An echo listener inside host `i` on its own thread; returns its address.
fn listen(net: &Net, i: usize) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = net.host(i).clone();
    std::thread::spawn(move || {
        h.enter().unwrap();
        let l = TcpListener::bind((h.addr, 0)).unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut b = [0u8; 4];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap()
}

/// Connect from host `i` to `to` with a timeout and exchange 4 bytes: Ok, or the error's kind.
fn probe(net: &Net, i: usize, to: SocketAddr) -> Result<(), ErrorKind> {
    let h = net.host(i).clone();
    std::thread::spawn(move || {
        h.enter().unwrap();
        let mut s =
            TcpStream::connect_timeout(&to, Duration::from_millis(700)).map_err(|e| e.kind())?;
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        s.write_all(b"ping").map_err(|e| e.kind())?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).map_err(|e| e.kind())?;
        assert_eq!(&b, b"ping");
        Ok(())
    })
    .join()
    .unwrap()
}

#[test]
fn hosts_talk_and_each_fault_does_what_it_says_until_its_guard_drops() {
    let net = Net::create(3).unwrap();
    let names: Vec<String> = net.hosts().iter().map(|h| h.ns.clone()).collect();
    let a1 = listen(&net, 1);
    let a3 = listen(&net, 3);
    assert_eq!(probe(&net, 2, a1), Ok(()), "h2 -> h1 on a healthy net");
    assert_eq!(probe(&net, 3, a1), Ok(()), "h3 -> h1 on a healthy net");

    // A vanished host: no reset, the connection attempt times out.
    {
        let _f = net.vanish(1).unwrap();
        let t = Instant::now();
        assert_eq!(probe(&net, 2, a1), Err(ErrorKind::TimedOut));
        assert!(
            t.elapsed() >= Duration::from_millis(600),
            "a drop must not answer"
        );
        // h2 and h3 still reach each other.
        assert_eq!(probe(&net, 2, a3), Ok(()));
    }
    assert_eq!(probe(&net, 2, a1), Ok(()), "healed when the guard dropped");

    // One direction of one link.
    {
        let _f = net.drop_link(2, 1).unwrap();
        assert_eq!(probe(&net, 2, a1), Err(ErrorKind::TimedOut));
        assert_eq!(probe(&net, 3, a1), Ok(()), "other hosts unaffected");
    }
    assert_eq!(probe(&net, 2, a1), Ok(()));

    // A reject: refused at once, only for that port and that source.
    {
        let f = net.reject(2, 1, a1.port()).unwrap();
        let t = Instant::now();
        assert_eq!(probe(&net, 2, a1), Err(ErrorKind::ConnectionRefused));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "a reset is immediate"
        );
        assert_eq!(probe(&net, 3, a1), Ok(()));
        f.heal();
    }
    assert_eq!(probe(&net, 2, a1), Ok(()));

    // Processes run inside a host see its address.
    let out = net
        .command(2, "ip")
        .args(["-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&net.host(2).addr.to_string()), "{text}");

    drop(net);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for n in names {
        assert!(!left.contains(&n), "namespace {n} outlived its Net");
    }
}
