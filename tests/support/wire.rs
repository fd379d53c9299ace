//! A point-to-point link between two network namespaces whose faults the test controls:
//! a TUN device in each namespace, and threads of the test process carrying each IP packet
//! from one to the other, delaying, dropping or reordering it on the way as `tc netem`
//! would (`delay D reorder R% loss L%`), or dropping everything (a partition).
//!
//! Why not veth + netem: kernels built without `CONFIG_NET_SCH_NETEM` (this machine's, for
//! one) have no netem, and the wire needs nothing but TUN. It owns its devices: dropping it
//! stops its threads and closes them, which removes the devices.

use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `_IOW('T', 202, int)`: attach the descriptor to a TUN device.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// How long a reader waits for a packet before it looks at the stop flag again.
const POLL_MS: libc::c_int = 100;

/// What the wire does to packets, in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    /// Added to every packet not picked for reordering.
    pub delay: Duration,
    /// Share of packets dropped, 0.0 to 1.0.
    pub loss: f64,
    /// Share of packets sent at once, overtaking the delayed ones (netem's `reorder`).
    pub reorder: f64,
    /// Drop everything.
    pub partitioned: bool,
}

/// What the wire did so far (both directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WireStats {
    /// Packets delivered.
    pub delivered: u64,
    /// Packets dropped by `loss` or a partition.
    pub dropped: u64,
    /// Packets sent at once while older packets were still held back: they overtook them.
    pub reordered: u64,
}

/// A packet on its way, ordered by when it is due (earliest first).
struct InFlight {
    due: Instant,
    seq: u64,
    to_b: bool,
    packet: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// State the reader and sender threads share.
struct Shared {
    impairment: Mutex<Impairment>,
    queue: Mutex<Queue>,
    ready: Condvar,
    stop: AtomicBool,
    delivered: AtomicU64,
    dropped: AtomicU64,
    reordered: AtomicU64,
}

struct Queue {
    heap: BinaryHeap<InFlight>,
    seq: u64,
    /// xorshift64* state: the loss and reorder draws (seeded, so a run can be replayed).
    rng: u64,
}

impl Queue {
    /// A uniform draw in [0, 1).
    fn draw(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A faultable link: device `a` in one namespace, `b` in another.
pub struct Wire {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Wire {
    /// Creates TUN device `name_a` in namespace `ns_a` and `name_b` in `ns_b` (neither
    /// configured yet) and starts carrying packets between them; `seed` drives the draws.
    ///
    /// # Errors
    /// Why a device could not be made (no `/dev/net/tun`, no permission, no namespace).
    pub fn new(
        ns_a: &str,
        name_a: &str,
        ns_b: &str,
        name_b: &str,
        seed: u64,
    ) -> Result<Self, String> {
        let a = Arc::new(open_tun(ns_a, name_a)?);
        let b = Arc::new(open_tun(ns_b, name_b)?);
        let shared = Arc::new(Shared {
            impairment: Mutex::new(Impairment::default()),
            queue: Mutex::new(Queue {
                heap: BinaryHeap::new(),
                seq: 0,
                rng: seed | 1,
            }),
            ready: Condvar::new(),
            stop: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        for (from, to_b) in [(Arc::clone(&a), true), (Arc::clone(&b), false)] {
            let shared = Arc::clone(&shared);
            threads.push(std::thread::spawn(move || read_loop(&shared, &from, to_b)));
        }
        let sender = Arc::clone(&shared);
        threads.push(std::thread::spawn(move || send_loop(&sender, &a, &b)));
        Ok(Self { shared, threads })
    }

    /// From now on, packets meet `impairment`.
    pub fn set(&self, impairment: Impairment) {
        *self.shared.impairment.lock().unwrap() = impairment;
    }

    /// The impairment now in force.
    pub fn impairment(&self) -> Impairment {
        *self.shared.impairment.lock().unwrap()
    }

    /// What the wire did so far.
    pub fn stats(&self) -> WireStats {
        WireStats {
            delivered: self.shared.delivered.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            reordered: self.shared.reordered.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.ready.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Opens a new TUN device `name` (IP packets, no header) inside namespace `ns`: a thread
/// enters the namespace for the one call, so the test's own threads stay where they are.
fn open_tun(ns: &str, name: &str) -> Result<OwnedFd, String> {
    assert!(name.len() < 16, "interface name {name} too long");
    let (ns, name) = (ns.to_owned(), name.to_owned());
    std::thread::spawn(move || {
        let netns = std::fs::File::open(format!("/var/run/netns/{ns}"))
            .map_err(|e| format!("open namespace {ns}: {e}"))?;
        // SAFETY: setns on a descriptor we own; it moves only this short-lived thread.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
        }
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| format!("open /dev/net/tun: {e}"))?;
        // struct ifreq: the name (16 bytes), then the flags.
        let mut ifreq = [0u8; 40];
        ifreq[..name.len()].copy_from_slice(name.as_bytes());
        let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        ifreq[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifreq` is big enough for.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("TUNSETIFF {name} in {ns}: {e}"));
        }
        Ok(OwnedFd::from(tun))
    })
    .join()
    .map_err(|_| "the thread opening a TUN device panicked".to_owned())?
}

/// Reads packets from `from` and queues (or drops) them for the other side.
fn read_loop(shared: &Shared, from: &OwnedFd, to_b: bool) {
    let mut buf = vec![0u8; 65536];
    while !shared.stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, POLL_MS) } <= 0 {
            continue;
        }
        // SAFETY: reading into a buffer we own, at most its length.
        let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else { continue };
        let impairment = *shared.impairment.lock().unwrap();
        let mut queue = shared.queue.lock().unwrap();
        if impairment.partitioned || queue.draw() < impairment.loss {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let now = Instant::now();
        let at_once = queue.draw() < impairment.reorder;
        let due = if at_once { now } else { now + impairment.delay };
        if at_once && queue.heap.iter().any(|p| p.to_b == to_b && p.due > now) {
            shared.reordered.fetch_add(1, Ordering::Relaxed);
        }
        queue.seq += 1;
        let seq = queue.seq;
        queue.heap.push(InFlight {
            due,
            seq,
            to_b,
            packet: buf[..n].to_vec(),
        });
        shared.ready.notify_all();
    }
}

/// Delivers queued packets when they are due.
fn send_loop(shared: &Shared, a: &OwnedFd, b: &OwnedFd) {
    let mut queue = shared.queue.lock().unwrap();
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = match queue.heap.peek() {
            Some(next) if next.due <= now => {
                let next = queue.heap.pop().expect("peeked");
                let to = if next.to_b { b } else { a };
                // SAFETY: writing a buffer we own; a TUN write injects one packet.
                let _ = unsafe {
                    libc::write(
                        to.as_raw_fd(),
                        next.packet.as_ptr().cast(),
                        next.packet.len(),
                    )
                };
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Some(next) => next.due - now,
            None => Duration::from_millis(u64::from(POLL_MS.unsigned_abs())),
        };
        queue = shared.ready.wait_timeout(queue, wait).unwrap().0;
    }
}
