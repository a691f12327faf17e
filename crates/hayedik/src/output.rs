//! The process's stdout and stderr. Nothing the program prints blocks a
//! task or fails one, whether its reader is slow, stalled or gone.
//!
//! - Events: [`write_events`] is the CLI's face. One thread takes events
//!   from an [`EventStream`] (whose bounded queue, in `events.rs`, decides
//!   what a lagging reader loses) and writes them to stdout as JSON lines or
//!   human lines. A failed write (a closed pipe: EPIPE) ends it, and later
//!   events are discarded.
//! - Other lines (logs, the final error line, the demo's own lines) are
//!   queued here and written by one thread per stream. A failed write closes
//!   the stream for good: later lines are dropped at once, and the process
//!   goes on (a `share` whose `| head` exited still serves, and still stops
//!   on SIGTERM). The queue is bounded in bytes. A [`Priority::Lossy`] line
//!   (logs) is dropped when [`LOSSY_BYTES`] already wait; any line is
//!   dropped when [`MAX_BYTES`] wait (a reader stalled for that long). Drops
//!   are counted and said on stderr once the stream moves again.
//!
//! Both delay the exit by at most the limits given to
//! [`EventWriter::flush`] and [`flush`].
//!
//! `std::println!` and friends panic on a closed pipe: the program does not
//! use them.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::events::{Event, EventStream, HandledWaiter};

/// Queued bytes beyond which lossy lines are dropped.
pub const LOSSY_BYTES: usize = 256 << 10;
/// Queued bytes beyond which every line is dropped.
pub const MAX_BYTES: usize = 2 << 20;

/// Whether a line may be dropped when its reader is slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Log lines: dropped first.
    Lossy,
    /// What a reader acts on (`ticket`, `done`, `error`, `stopped`...):
    /// dropped only past [`MAX_BYTES`].
    Essential,
}

/// Queues `line` (ending with a newline) for stdout.
pub fn stdout(line: String, priority: Priority) {
    STDOUT.push(line.into_bytes(), priority);
}

/// Queues `line` (ending with a newline) for stderr.
pub fn stderr(line: String, priority: Priority) {
    STDERR.push(line.into_bytes(), priority);
}

/// Waits until what is queued is written (or its stream closed), at most
/// `limit`: called before the process exits.
pub fn flush(limit: Duration) {
    let deadline = Instant::now() + limit;
    // Stdout first: its writer may still report drops on stderr.
    STDOUT.flush_until(deadline);
    STDERR.flush_until(deadline);
}

/// The terminal's bars and status lines (on stderr): every line the
/// process writes goes around them (see [`bars`]), so a line never breaks
/// into a bar.
static BARS: std::sync::LazyLock<indicatif::MultiProgress> =
    std::sync::LazyLock::new(indicatif::MultiProgress::new);

/// Whether a bar was ever shown: only then do writes go around them (a
/// pipe's writers never wait for each other).
static BARS_SHOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Shows `bar` on stderr, among the others; lines printed meanwhile go
/// above the bars.
pub fn show_bar(bar: indicatif::ProgressBar) -> indicatif::ProgressBar {
    BARS_SHOWN.store(true, std::sync::atomic::Ordering::Relaxed);
    BARS.add(bar)
}

/// Runs `f` (a write) with the bars cleared, then draws them again.
fn around_bars<R>(f: impl FnOnce() -> R) -> R {
    if BARS_SHOWN.load(std::sync::atomic::Ordering::Relaxed) {
        BARS.suspend(f)
    } else {
        f()
    }
}

/// The width of the terminal on stderr, if it is one.
pub fn term_width() -> Option<usize> {
    console::Term::stderr()
        .size_checked()
        .map(|(_, cols)| usize::from(cols))
}

/// The CLI's face: a thread that writes the events of `stream` to stdout,
/// as JSON lines when `json`, else as human lines (on stdout what the user
/// acts on and the results, on stderr warnings and notes; `error` is left
/// to the caller, who prints it on stderr). `listening`, whose address
/// matters to a tracker's user only, is printed when `show_listening`.
pub fn write_events(stream: EventStream, json: bool) -> EventWriter {
    write_events_for(stream, json, true, false)
}

/// [`write_events`], choosing whether `listening` is shown to people, and
/// whether a ticket is also drawn as a QR code (`share --qr`).
pub fn write_events_for(
    stream: EventStream,
    json: bool,
    show_listening: bool,
    qr: bool,
) -> EventWriter {
    let waiter = stream.handled_waiter();
    let spawned = std::thread::Builder::new()
        .name("events".into())
        .spawn(move || loop {
            match stream.recv_blocking(Duration::from_secs(3600)) {
                Ok(Some(event)) => {
                    if render(&event, json, show_listening, qr).is_err() {
                        // The reader is gone: dropping the stream tells
                        // the sinks.
                        return;
                    }
                }
                Ok(None) => return,
                Err(_) => {}
            }
        });
    if let Err(e) = spawned {
        // The stream was dropped with the closure: events are discarded.
        stderr(
            format!("hayedik: cannot start the events writer: {e}\n"),
            Priority::Essential,
        );
    }
    EventWriter { waiter }
}

/// Writes one event; an error means stdout's reader is gone.
fn render(event: &Event, json: bool, show_listening: bool, qr: bool) -> std::io::Result<()> {
    let line = if json {
        if let Event::Warning { .. } = event {
            // As an error's line: on stderr too, for whoever reads it.
            stderr(event.human() + "\n", Priority::Essential);
        }
        match serde_json::to_string(event) {
            Ok(line) => line + "\n",
            Err(_) => return Ok(()),
        }
    } else {
        match event {
            Event::Error { .. } => return Ok(()),
            // Progress is the bar's (drawn on a terminal only).
            Event::Progress { .. } => return Ok(()),
            Event::Dht { .. } => {
                tracing::info!("{}", event.human());
                return Ok(());
            }
            Event::Listening { .. } if !show_listening => {
                tracing::info!("{}", event.human());
                return Ok(());
            }
            Event::Dropped { .. } => {
                stderr(format!("hayedik: {}\n", event.human()), Priority::Essential);
                return Ok(());
            }
            Event::Warning { .. } | Event::Resuming { .. } => {
                stderr(event.human() + "\n", Priority::Essential);
                return Ok(());
            }
            Event::Ticket { ticket, .. } if qr => event.human() + "\n" + &qr_code(ticket),
            e => e.human() + "\n",
        }
    };
    let mut out = std::io::stdout().lock();
    around_bars(|| write_all(&mut out, &[line.into_bytes()]))
}

/// `text` as a QR code drawn with half blocks (two rows a line), light on
/// dark as phone cameras expect from a terminal.
fn qr_code(text: &str) -> String {
    use qrcode::render::unicode::Dense1x2;
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => {
            code.render::<Dense1x2>()
                .dark_color(Dense1x2::Light)
                .light_color(Dense1x2::Dark)
                .quiet_zone(true)
                .build()
                + "\n"
        }
        Err(e) => format!("(no QR code: {e})\n"),
    }
}

/// Waits for [`write_events`]'s thread at exit.
#[derive(Debug)]
pub struct EventWriter {
    waiter: HandledWaiter,
}

impl EventWriter {
    /// Waits until every event queued is written (or stdout closed), at
    /// most `limit`: called before the process exits, after the last event.
    pub fn flush(&self, limit: Duration) -> bool {
        self.waiter.wait(limit)
    }
}

/// tracing's writer: each formatted event is one lossy line on stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        STDERR.push(buf.to_vec(), Priority::Lossy);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fd {
    Stdout,
    Stderr,
}

#[derive(Debug)]
struct Queue {
    chunks: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The writer thread is writing a batch taken from `chunks`.
    writing: bool,
    /// A write failed: the reader is gone, everything is dropped.
    closed: bool,
    /// The writer thread runs (started by the first line).
    started: bool,
    /// Lines dropped since the writer last took a batch.
    dropped: u64,
}

#[derive(Debug)]
struct Stream {
    fd: Fd,
    queue: Mutex<Queue>,
    /// Signalled when lines are queued and when a batch is written.
    changed: Condvar,
}

static STDOUT: Stream = Stream::new(Fd::Stdout);
static STDERR: Stream = Stream::new(Fd::Stderr);

impl Stream {
    const fn new(fd: Fd) -> Stream {
        Stream {
            fd,
            queue: Mutex::new(Queue {
                chunks: VecDeque::new(),
                bytes: 0,
                writing: false,
                closed: false,
                started: false,
                dropped: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn name(&self) -> &'static str {
        match self.fd {
            Fd::Stdout => "stdout",
            Fd::Stderr => "stderr",
        }
    }

    fn push(&'static self, line: Vec<u8>, priority: Priority) {
        let mut q = self.lock();
        if q.closed {
            return;
        }
        let limit = match priority {
            Priority::Lossy => LOSSY_BYTES,
            Priority::Essential => MAX_BYTES,
        };
        if q.bytes > 0 && q.bytes + line.len() > limit {
            q.dropped += 1;
            return;
        }
        if !q.started {
            let spawned = std::thread::Builder::new()
                .name(format!("{}-writer", self.name()))
                .spawn(move || self.run());
            if spawned.is_err() {
                // No thread: write here, as a plain program would.
                drop(q);
                let _ = self.write(&[line]);
                return;
            }
            q.started = true;
        }
        q.bytes += line.len();
        q.chunks.push_back(line);
        self.changed.notify_all();
    }

    /// The writer thread: takes everything queued, writes it, until a
    /// write fails.
    fn run(&'static self) {
        loop {
            let (batch, dropped) = {
                let mut q = self.lock();
                while q.chunks.is_empty() {
                    q = self.changed.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                q.writing = true;
                q.bytes = 0;
                (
                    std::mem::take(&mut q.chunks),
                    std::mem::take(&mut q.dropped),
                )
            };
            let mut batch = Vec::from(batch);
            if dropped > 0 {
                let note = format!(
                    "hayedik: {dropped} lines to {} dropped: it was not read in time\n",
                    self.name()
                );
                match self.fd {
                    Fd::Stdout => STDERR.push(note.into_bytes(), Priority::Essential),
                    Fd::Stderr => batch.insert(0, note.into_bytes()),
                }
            }
            let written = self.write(&batch);
            let mut q = self.lock();
            q.writing = false;
            if written.is_err() {
                q.closed = true;
                q.chunks.clear();
                q.bytes = 0;
            }
            self.changed.notify_all();
            if written.is_err() {
                return;
            }
        }
    }

    /// Writes `batch`; an error means the reader is gone.
    fn write(&self, batch: &[Vec<u8>]) -> std::io::Result<()> {
        around_bars(|| match self.fd {
            Fd::Stdout => write_all(&mut std::io::stdout().lock(), batch),
            Fd::Stderr => write_all(&mut std::io::stderr().lock(), batch),
        })
    }

    fn flush_until(&self, deadline: Instant) {
        let mut q = self.lock();
        while q.started && !q.closed && (q.writing || !q.chunks.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            q = self
                .changed
                .wait_timeout(q, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// `write_all` of every chunk, then a flush; waits out a non-blocking
/// descriptor's `WouldBlock` (an inherited O_NONBLOCK pipe is still open).
fn write_all(out: &mut impl Write, batch: &[Vec<u8>]) -> std::io::Result<()> {
    for chunk in batch {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            match out.write(rest) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
    loop {
        match out.flush() {
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A writer that fails like a closed pipe.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A writer that takes two bytes at a time and says WouldBlock between.
    struct Trickle(Vec<u8>, bool);

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.1 = !self.1;
            if self.1 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(2);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_an_error_not_a_panic() {
        let e = write_all(&mut Closed, &[b"x\n".to_vec()]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BrokenPipe);
    }

    #[test]
    fn would_block_is_waited_out() {
        let mut t = Trickle(Vec::new(), false);
        write_all(&mut t, &[b"hello\n".to_vec(), b"world\n".to_vec()]).unwrap();
        assert_eq!(t.0, b"hello\nworld\n");
    }

    #[test]
    fn a_closed_stream_drops_lines_and_flushes_at_once() {
        static S: Stream = Stream::new(Fd::Stdout);
        {
            let mut q = S.lock();
            q.started = true;
            q.closed = true;
        }
        S.push(b"lost\n".to_vec(), Priority::Essential);
        assert!(S.lock().chunks.is_empty());
        S.flush_until(Instant::now() + Duration::from_secs(60));
    }

    #[test]
    fn a_stalled_reader_costs_bounded_memory_and_lossy_lines_go_first() {
        // A stream whose writer never runs: as if blocked in write(2).
        static S: Stream = Stream::new(Fd::Stdout);
        S.lock().started = true;
        let line = vec![b'x'; 1000];
        for _ in 0..(LOSSY_BYTES / 1000) {
            S.push(line.clone(), Priority::Lossy);
        }
        let lossy_full = S.lock().bytes;
        S.push(line.clone(), Priority::Lossy);
        assert_eq!(S.lock().bytes, lossy_full, "a lossy line past the bound");
        assert_eq!(S.lock().dropped, 1);
        S.push(line.clone(), Priority::Essential);
        assert_eq!(S.lock().bytes, lossy_full + 1000, "an essential line kept");
        for _ in 0..(MAX_BYTES / 1000) {
            S.push(line.clone(), Priority::Essential);
        }
        let q = S.lock();
        assert!(q.bytes <= MAX_BYTES, "{}", q.bytes);
        assert!(q.dropped > 1);
        drop(q);
        // The flush gives up at its deadline.
        let started = Instant::now();
        S.flush_until(Instant::now() + Duration::from_millis(50));
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
