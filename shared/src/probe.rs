//! The `healthcheck` subcommand of both binaries: one HTTP GET to the process's own health
//! endpoint, so a container image needs no curl or shell for its HEALTHCHECK.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::Duration,
};

/// How long the probe waits for the connection and for the answer.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The address to probe a listener bound to `host:port` at: an unspecified bind address
/// (`0.0.0.0`, `::`) is reached through loopback.
pub fn local_addr(host: IpAddr, port: u16) -> SocketAddr {
    let ip = match host {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, port)
}

/// The `healthcheck` subcommand: probes `path` on `addr` and turns the verdict into the exit
/// code (0 healthy, 1 not), explaining a failure on stderr.
pub fn healthcheck(binary: &str, addr: SocketAddr, path: &str) -> std::process::ExitCode {
    match get(addr, path, TIMEOUT) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{binary} healthcheck: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `GET path` on a fresh connection to `addr`; `Ok` when the status is 2xx, otherwise what
/// went wrong.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|err| format!("connecting to {addr}: {err}"))?;
    let io = |err: std::io::Error| format!("talking to {addr}: {err}");
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    // One write: `write!` straight to the socket would send the request in pieces, and a
    // server that answers after its first read and closes would reset the rest (a flaky
    // "broken pipe" in this module's tests).
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    // The status line is all we need; it fits in the first read of any sane server.
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        let n = stream.read(&mut head[len..]).map_err(io)?;
        if n == 0 {
            break;
        }
        len += n;
        if head[..len].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if line.starts_with("HTTP/1.") && status.starts_with('2') && status.len() == 3 {
        Ok(())
    } else {
        Err(format!(
            "GET http://{addr}{path} answered {:?}",
            line.lines().next().unwrap_or("nothing")
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn serve_once(answer: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // The whole request head, then the answer.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(answer.as_bytes());
        });
        addr
    }

    #[test]
    fn two_hundred_is_healthy_anything_else_is_not() {
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(get(ok, "/health/live", TIMEOUT), Ok(()));
        let down = serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
        let err = get(down, "/health/live", TIMEOUT).unwrap_err();
        assert!(err.contains("503"), "{err}");
    }

    #[test]
    fn nothing_listening_is_unhealthy() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = get(local_addr([0, 0, 0, 0].into(), port), "/", TIMEOUT).unwrap_err();
        assert!(err.starts_with("connecting to 127.0.0.1:"), "{err}");
    }
}
