// The interface tests of `RecvBatch` and `send_all`, included by `mmsg.rs` once per
// implementation (with `RecvBatch`, `send_all`, `SLOT`, `SocketAddr` and `UdpSocket` in scope).

#[test]
fn batches_of_datagrams_arrive_with_their_senders_and_lengths() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let big = vec![7u8; 1500];
    let sent = send_all(&a, &[(b"one", to), (&big, to)]);
    assert_eq!(sent, 2);
    assert_eq!(send_all(&b, &[(b"three", to)]), 1);
    rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut batch = RecvBatch::new();
    let mut got = Vec::new();
    while got.len() < 3 {
        let n = batch.recv(&rx).unwrap();
        for i in 0..n {
            let (d, p) = batch.get(i).unwrap();
            got.push((d.to_vec(), p));
        }
        assert!(batch.get(n).is_none());
    }
    assert_eq!(got[0], (b"one".to_vec(), a.local_addr().unwrap()));
    assert_eq!(got[1], (big, a.local_addr().unwrap()));
    assert_eq!(got[2], (b"three".to_vec(), b.local_addr().unwrap()));
}

#[test]
fn ipv6_datagrams_arrive_with_their_senders_across_reused_batches() {
    // A host without IPv6 loopback cannot run this; everything else here is IPv4.
    let rx = match UdpSocket::bind("[::1]:0") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skipped: no IPv6 loopback ({e})");
            return;
        }
    };
    let to = rx.local_addr().unwrap();
    let a = UdpSocket::bind("[::1]:0").unwrap();
    let b = UdpSocket::bind("[::1]:0").unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut batch = RecvBatch::new();
    // The same batch (and its headers, whose address lengths the kernel rewrites) serves
    // every round.
    for round in 0..3u8 {
        assert_eq!(send_all(&a, &[(&[round, 1], to)]), 1);
        assert_eq!(send_all(&b, &[(&[round, 2, 2], to)]), 1);
        let mut got = Vec::new();
        while got.len() < 2 {
            let n = batch.recv(&rx).unwrap();
            for i in 0..n {
                let (d, p) = batch.get(i).unwrap();
                got.push((d.to_vec(), p));
            }
        }
        assert_eq!(got[0], (vec![round, 1], a.local_addr().unwrap()));
        assert_eq!(got[1], (vec![round, 2, 2], b.local_addr().unwrap()));
    }
}

#[test]
fn a_datagram_the_kernel_refuses_is_skipped_and_the_rest_are_sent() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    // An IPv6 destination on an IPv4 socket: EAFNOSUPPORT for that message alone.
    let v6: SocketAddr = "[::1]:9".parse().unwrap();
    let msgs: [(&[u8], SocketAddr); 4] = [(b"a", to), (b"b", v6), (b"c", to), (b"d", v6)];
    assert_eq!(send_all(&tx, &msgs), 2);
    rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut batch = RecvBatch::new();
    let mut got = Vec::new();
    while got.len() < 2 {
        let n = batch.recv(&rx).unwrap();
        for i in 0..n {
            got.push(batch.get(i).unwrap().0.to_vec());
        }
    }
    assert_eq!(got, [b"a".to_vec(), b"c".to_vec()]);
}

#[test]
fn a_datagram_longer_than_a_slot_arrives_truncated_to_the_slot() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.send_to(&vec![1u8; SLOT + 100], rx.local_addr().unwrap())
        .unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut batch = RecvBatch::new();
    assert_eq!(batch.recv(&rx).unwrap(), 1);
    assert_eq!(batch.get(0).unwrap().0.len(), SLOT);
}
