//! The floor under a durable write on this machine: one `fdatasync` of a
//! page appended to a file on the disk the stores use (the temporary
//! directory), plus one loopback round trip of a small message. No store
//! can acknowledge a durable PATCH faster than that; the report puts each
//! backend's single-client PATCH beside it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

#[allow(clippy::struct_field_names)] // the report's names carry the unit, as elsewhere
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Floor {
    /// Median of `fdatasync` after appending 4 KiB, in the temporary directory.
    pub(crate) fsync_ms: f64,
    /// Median of a 256-byte request and answer over a kept-open loopback connection.
    pub(crate) loopback_ms: f64,
    /// The two added.
    pub(crate) floor_ms: f64,
}

const RUNS: usize = 200;

/// Measures the floor (about a second).
pub(crate) fn measure() -> anyhow::Result<Floor> {
    let fsync_ms = median_ms(fsyncs()?);
    let loopback_ms = median_ms(round_trips()?);
    Ok(Floor {
        fsync_ms,
        loopback_ms,
        floor_ms: fsync_ms + loopback_ms,
    })
}

fn fsyncs() -> anyhow::Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("wal"))?;
    let page = [0x5a_u8; 4096];
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        file.write_all(&page)?;
        file.sync_data()?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

fn round_trips() -> anyhow::Result<Vec<Duration>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut message = [0_u8; 256];
        for _ in 0..RUNS {
            stream.read_exact(&mut message)?;
            stream.write_all(&message)?;
        }
        Ok(())
    });
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let mut message = [0x5a_u8; 256];
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut message)?;
        samples.push(t.elapsed());
    }
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(samples)
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort_unstable();
    samples
        .get(samples.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}
