//! Talking to Kiln's firmware on a board: started under QEMU (emulated boards) or flashed and started through
//! probe-rs (real boards), then fed `Command`s and read `Frame`s over its UART.
//!
//! Under QEMU the board's UART is a Unix socket QEMU serves (it waits for us before starting the guest, so no
//! byte is lost), the firmware's `defmt` logs arrive over semihosting on QEMU's stdout and are decoded here with
//! the ELF's format table, and `-icount shift=0` makes every run execute and count exactly the same.
//! On a real board `probe-rs run` flashes the ELF and prints its RTT logs, and the UART is a serial port.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiln_boards::Board;
use kiln_runtime::telemetry::{
    encode_command, error_code, Command, Frame, FrameReader, InferenceReport, TelemetryError,
    MAX_FRAME_BYTES,
};

use crate::error::{input, Error, Result};

/// A byte stream to the board's UART.
pub trait Link: Read + Write + Send {}
impl<T: Read + Write + Send> Link for T {}

/// What the board said at boot (`Frame::Hello`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub device_id: u64,
    pub firmware_id: u32,
    pub model_id: u32,
    pub format_version: u16,
    pub arena_bytes: u32,
}

/// Called with every frame the board sends, good or bad, in order.
pub type FrameHook = Box<dyn FnMut(&std::result::Result<Frame, TelemetryError>) + Send>;

/// A running board.
pub struct Device {
    name: String,
    child: Child,
    link: Box<dyn Link>,
    reader: FrameReader<MAX_FRAME_BYTES>,
    pending: VecDeque<Frame>,
    hook: Option<FrameHook>,
    logs: Arc<Mutex<Vec<String>>>,
    log_thread: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
    /// How long to wait for the board's next frame.
    pub timeout: Duration,
    _socket_dir: Option<tempfile::TempDir>,
}

fn internal(what: impl std::fmt::Display) -> Error {
    Error::Internal(anyhow::anyhow!("{what}"))
}

/// Decodes the firmware's `defmt` stream (QEMU's stdout) into lines, echoing them to stderr when `echo`.
fn spawn_log_decoder(
    elf: &Path,
    board: String,
    mut stdout: impl Read + Send + 'static,
    echo: bool,
    logs: Arc<Mutex<Vec<String>>>,
) -> Result<JoinHandle<()>> {
    let bytes = std::fs::read(elf).map_err(|e| internal(format!("{}: {e}", elf.display())))?;
    let table = defmt_decoder::Table::parse(&bytes)
        .map_err(|e| internal(format!("{}: defmt table: {e}", elf.display())))?
        .ok_or_else(|| internal(format!("{}: no defmt table in the firmware", elf.display())))?;
    Ok(std::thread::spawn(move || {
        let mut decoder = table.new_stream_decoder();
        let mut buf = [0u8; 4096];
        loop {
            let n = match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            decoder.received(&buf[..n]);
            loop {
                match decoder.decode() {
                    Ok(frame) => {
                        let level = frame
                            .level()
                            .map(|l| l.as_str().to_uppercase())
                            .unwrap_or_default();
                        let line = format!("{level:<5} {}", frame.display_message());
                        if echo {
                            eprintln!("[{board}] {line}");
                        }
                        if let Ok(mut l) = logs.lock() {
                            l.push(line);
                        }
                    }
                    Err(defmt_decoder::DecodeError::UnexpectedEof) => break,
                    Err(defmt_decoder::DecodeError::Malformed) => {
                        if let Ok(mut l) = logs.lock() {
                            l.push("(malformed defmt frame skipped)".into());
                        }
                    }
                }
            }
        }
    }))
}

fn collect_stderr(mut stderr: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        if let Ok(mut i) = into.lock() {
            i.push_str(&s);
        }
    });
}

/// However kiln ends (Ctrl-C, a kill, a crash), the emulator or probe-rs it started ends with it.
fn die_with_parent(cmd: &mut Process) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

impl Device {
    /// Starts `elf` on an emulated board. `echo_logs`: print the firmware's logs to stderr as they come.
    pub fn start_qemu(board: &Board, elf: &Path, echo_logs: bool) -> Result<Device> {
        let qemu = board.qemu.as_ref().ok_or_else(|| {
            input(format!(
                "board {} is not emulated (it has no [qemu] section)",
                board.name
            ))
        })?;
        let dir = tempfile::tempdir().map_err(internal)?;
        let socket = dir.path().join("uart.sock");
        let mut qemu_cmd = Process::new("qemu-system-arm");
        die_with_parent(&mut qemu_cmd);
        let mut child = qemu_cmd
            .args(["-machine", &qemu.machine, "-cpu", &qemu.cpu])
            .args(["-nographic", "-monitor", "none"])
            .arg("-chardev")
            .arg(format!("socket,id=uart,path={},server=on,wait=on", socket.display()))
            .args(["-serial", "chardev:uart"])
            .args(["-semihosting-config", "enable=on,target=native"])
            .args(["-icount", "shift=0,align=off,sleep=off"])
            .arg("-kernel")
            .arg(elf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                input(format!(
                    "cannot start qemu-system-arm ({e}): install QEMU (Debian/Ubuntu: apt-get install qemu-system-arm)"
                ))
            })?;
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(e) = child.stderr.take() {
            collect_stderr(e, stderr.clone());
        }
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| internal("no QEMU stdout"))?;
        let log_thread =
            spawn_log_decoder(elf, board.name.clone(), stdout, echo_logs, logs.clone())?;

        // QEMU creates the socket, then waits for us.
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(&socket) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let err = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                        return Err(internal(format!(
                            "QEMU exited at start ({status}): {}",
                            err.trim()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    let _ = child.kill();
                    return Err(internal(format!(
                        "cannot connect to QEMU's UART socket: {e}"
                    )));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(internal)?;
        Ok(Device {
            name: board.name.clone(),
            child,
            link: Box::new(stream),
            reader: FrameReader::new(),
            pending: VecDeque::new(),
            hook: None,
            logs,
            log_thread: Some(log_thread),
            stderr,
            timeout: Duration::from_secs(120),
            _socket_dir: Some(dir),
        })
    }

    /// Flashes and starts `elf` on a real board with `probe-rs run` (which prints the firmware's RTT logs), and
    /// talks to it over the serial port `port`.
    pub fn start_probe(board: &Board, elf: &Path, port: &Path, baud: u32) -> Result<Device> {
        let probe = board.probe_rs.as_ref().ok_or_else(|| {
            input(format!(
                "board {} is not flashed with probe-rs (it has no [probe_rs] section)",
                board.name
            ))
        })?;
        // Open the port first so that the Hello sent at boot is not missed.
        let serial = serialport::new(port.to_string_lossy(), baud)
            .timeout(Duration::from_millis(100))
            .open()
            .map_err(|e| input(format!("{}: {e}", port.display())))?;
        let mut probe_cmd = Process::new("probe-rs");
        die_with_parent(&mut probe_cmd);
        let child = probe_cmd
            .args(["run", "--chip", &probe.chip])
            .arg(elf)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| {
                input(format!(
                    "cannot start probe-rs ({e}): install it (https://probe.rs: `cargo install probe-rs-tools`)"
                ))
            })?;
        Ok(Device {
            name: board.name.clone(),
            child,
            link: Box::new(serial),
            reader: FrameReader::new(),
            pending: VecDeque::new(),
            hook: None,
            logs: Arc::new(Mutex::new(Vec::new())),
            log_thread: None,
            stderr: Arc::new(Mutex::new(String::new())),
            timeout: Duration::from_secs(120),
            _socket_dir: None,
        })
    }

    /// Every frame received from now on, good or bad, is shown to `hook` first.
    pub fn on_frame(&mut self, hook: FrameHook) {
        self.hook = Some(hook);
    }

    /// Frames received so far: (good, bad).
    pub fn frame_counts(&self) -> (u32, u32) {
        (self.reader.frames_ok(), self.reader.frames_bad())
    }

    fn gone(&mut self, what: &str) -> Error {
        std::thread::sleep(Duration::from_millis(100));
        let logs = self.logs();
        let err = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        internal(format!(
            "{what} ({}); its last logs:\n{}{}",
            self.name,
            logs.iter()
                .rev()
                .take(10)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            if err.trim().is_empty() {
                String::new()
            } else {
                format!("\nQEMU: {}", err.trim())
            }
        ))
    }

    /// The next good frame; bad ones are counted, shown to the hook and skipped.
    pub fn next_frame(&mut self) -> Result<Frame> {
        if let Some(f) = self.pending.pop_front() {
            return Ok(f);
        }
        let deadline = Instant::now() + self.timeout;
        let mut buf = [0u8; 1024];
        loop {
            match self.link.read(&mut buf) {
                Ok(0) => return Err(self.gone("the board closed its UART")),
                Ok(n) => {
                    for &b in &buf[..n] {
                        if let Some(result) = self.reader.push(b) {
                            if let Some(hook) = self.hook.as_mut() {
                                hook(&result);
                            }
                            if let Ok(frame) = result {
                                self.pending.push_back(frame);
                            }
                        }
                    }
                    if let Some(f) = self.pending.pop_front() {
                        return Ok(f);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Err(self.gone(&format!("the board stopped ({status})")));
                    }
                    if Instant::now() > deadline {
                        return Err(self.gone(&format!(
                            "no telemetry from the board for {} s",
                            self.timeout.as_secs()
                        )));
                    }
                }
                Err(e) => return Err(self.gone(&format!("reading the board's UART: {e}"))),
            }
        }
    }

    /// Writes bytes to the board's UART as they are (tests use it to send noise and damaged frames).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.link
            .write_all(bytes)
            .map_err(|e| internal(format!("writing to the board's UART: {e}")))?;
        self.link
            .flush()
            .map_err(|e| internal(format!("writing to the board's UART: {e}")))
    }

    pub fn send(&mut self, command: &Command<'_>) -> Result<()> {
        let len = match command {
            Command::Infer { input, .. } => input.len(),
            _ => 0,
        };
        let mut buf = vec![0u8; len + len / 254 + 32];
        let bytes = encode_command(command, &mut buf).map_err(internal)?;
        self.send_raw(bytes)
    }

    /// Waits for the board's `Hello` (skipping heartbeats).
    pub fn hello(&mut self) -> Result<Hello> {
        loop {
            match self.next_frame()? {
                Frame::Hello {
                    device_id,
                    firmware_id,
                    model_id,
                    format_version,
                    arena_bytes,
                } => {
                    return Ok(Hello {
                        device_id,
                        firmware_id,
                        model_id,
                        format_version,
                        arena_bytes,
                    })
                }
                Frame::Error { code, detail } => {
                    return Err(self.gone(&format!(
                        "the board reported error {code} (detail {detail}) at boot"
                    )))
                }
                _ => {}
            }
        }
    }

    /// One inference: `input` is every graph input's bytes in order; returns each output's bytes (sized
    /// `output_sizes`) and the board's report.
    pub fn infer(
        &mut self,
        sequence: u32,
        input: &[u8],
        output_sizes: &[usize],
        per_op: bool,
    ) -> Result<(Vec<Vec<u8>>, InferenceReport)> {
        self.send(&Command::Infer {
            sequence,
            per_op,
            full_output: true,
            input,
        })?;
        let mut outputs: Vec<Vec<u8>> = output_sizes.iter().map(|&n| vec![0; n]).collect();
        let mut received: Vec<usize> = vec![0; output_sizes.len()];
        loop {
            match self.next_frame()? {
                Frame::OutputChunk {
                    sequence: s,
                    index,
                    offset,
                    data,
                } if s == sequence => {
                    let out = outputs.get_mut(usize::from(index)).ok_or_else(|| {
                        internal(format!(
                            "the board sent output {index}, the model has {}",
                            output_sizes.len()
                        ))
                    })?;
                    let at = offset as usize;
                    let slot = out.get_mut(at..at + data.len()).ok_or_else(|| {
                        internal(format!(
                            "the board sent bytes {at}..{} of a {}-byte output",
                            at + data.len(),
                            output_sizes[usize::from(index)]
                        ))
                    })?;
                    slot.copy_from_slice(&data);
                    received[usize::from(index)] += data.len();
                }
                Frame::Inference(report) if report.sequence == sequence => {
                    if received.as_slice() != output_sizes {
                        return Err(internal(format!(
                            "inference {sequence}: the board sent {received:?} output bytes, the model has {output_sizes:?}"
                        )));
                    }
                    return Ok((outputs, report));
                }
                Frame::Error { code, detail } if code == error_code::STACK_EXHAUSTED => {
                    return Err(crate::error::input(format!(
                        "inference {sequence} on {}: {} of {detail} bytes; its outputs cannot be trusted",
                        self.name,
                        error_code::describe(code, detail)
                    )))
                }
                Frame::Error { code, detail } => {
                    return Err(self.gone(&format!(
                        "inference {sequence}: the board reported error {code} (detail {detail}): {}",
                        error_code::describe(code, detail)
                    )))
                }
                _ => {}
            }
        }
    }

    /// Ends the session: asks the firmware to exit and waits for it (emulated boards), or stops probe-rs (real
    /// boards, whose firmware resets). Returns the firmware's decoded logs.
    pub fn finish(mut self) -> Result<Vec<String>> {
        let _ = self.send(&Command::Exit);
        let deadline = Instant::now() + Duration::from_secs(20);
        let emulated = self._socket_dir.is_some();
        loop {
            match self.child.try_wait().map_err(internal)? {
                Some(status) if status.success() || !emulated => break,
                Some(status) => {
                    return Err(self.gone(&format!("the firmware exited with {status}")))
                }
                None if !emulated => {
                    // probe-rs keeps running after the reset; give the last frames a moment, then stop it.
                    std::thread::sleep(Duration::from_millis(300));
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                None if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    return Err(
                        self.gone("the firmware did not exit within 20 s of the Exit command")
                    );
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
        Ok(self.logs())
    }

    /// The firmware's decoded logs so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Streams frames to `show` until the board stops (or the process is interrupted).
    pub fn watch(&mut self, mut show: impl FnMut(&Frame)) -> Result<()> {
        self.timeout = Duration::from_secs(100 * 365 * 24 * 3600);
        loop {
            let f = self.next_frame()?;
            show(&f);
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The serial port a real board's telemetry arrives on, when the user did not name one: the only USB serial
/// port present.
pub fn default_port() -> Result<PathBuf> {
    let ports = serialport::available_ports().unwrap_or_default();
    let usb: Vec<_> = ports
        .iter()
        .filter(|p| {
            p.port_name.contains("ACM")
                || p.port_name.contains("USB")
                || p.port_name.contains("usbmodem")
        })
        .collect();
    match usb.as_slice() {
        [one] => Ok(PathBuf::from(&one.port_name)),
        [] => Err(input(
            "no USB serial port found for the board's telemetry: connect the board or give --port",
        )),
        many => Err(input(format!(
            "several serial ports ({}): choose one with --port",
            many.iter()
                .map(|p| p.port_name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
