//! Composability: an established protocol layer runs unchanged over an arca
//! stream. A rustls client in the guest talks TLS 1.3 to a rustls server on
//! the host; the monitor relays ciphertext it cannot read.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use arca_monitor::Config;
use arca_testkit::in_proc::InProcMonitor;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

#[test]
fn rustls_client_in_the_guest_talks_to_a_rustls_server_on_the_host() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let server_config = Arc::new(
        ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut tls = StreamOwned::new(ServerConnection::new(server_config).unwrap(), tcp);
        let mut req = [0u8; 18];
        tls.read_exact(&mut req).unwrap();
        assert_eq!(&req, b"GET / HTTP/1.0\r\n\r\n");
        // A reply larger than one TLS record and than a data ring.
        let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        tls.write_all(
            format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
        )
        .unwrap();
        tls.write_all(&body).unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        let version = tls.conn.protocol_version();
        (body, version)
    });

    let m = InProcMonitor::start("tls", Config::default());
    let session = m.session();
    let stream = session.connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let client_config = Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = StreamOwned::new(ClientConnection::new(client_config, name).unwrap(), stream);
    tls.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut response = Vec::new();
    tls.read_to_end(&mut response).unwrap();
    let (body, version) = server.join().unwrap();
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(response.starts_with(b"HTTP/1.0 200 OK\r\n"));
    assert_eq!(
        &response[split..],
        &body[..],
        "the whole body arrived intact"
    );
}
