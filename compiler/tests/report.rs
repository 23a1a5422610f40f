//! `kiln report` on the bundled MNIST CNN: the page is self-contained, has every section with real data, and
//! renders in a real browser (headless Chromium) without a console error, its charts visibly drawn.
//!
//! Needs `chromium` (`apt-get install chromium`; `scripts/test.sh` installs it) and a Cortex-M toolchain for the
//! fit section (`scripts/setup-cortex-m.sh`); without them the tests fail and say how to get them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln_compiler::report::svg::colour;

mod common;
use common::{kiln, repo, s, text};

fn assert_exit(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout: {}\nstderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// The report on int8 MNIST with calibration, labelled data and the default board, made once for all tests.
fn mnist_report() -> &'static (PathBuf, String) {
    static REPORT: OnceLock<(PathBuf, String)> = OnceLock::new();
    REPORT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let out = dir.join("mnist report.html");
        let r = repo();
        let o = kiln(&[
            "report",
            s(&r.join("models/mnist_cnn.onnx")),
            "--calib",
            s(&r.join("data/mnist_calib.npy")),
            "--eval",
            s(&r.join("data/mnist_test.npz")),
            "-o",
            s(&out),
        ]);
        assert_exit(&o, 0, "kiln report");
        let html = std::fs::read_to_string(&out).expect("read the report");
        (out, html)
    })
}

/// Every `attr="value"` value in the page.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!(" {attr}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

/// The section of the page from heading `id` to the next heading.
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<h2 id=\"{id}\""))
        .unwrap_or_else(|| panic!("no section '{id}'"));
    let rest = &html[start + 1..];
    let end = rest.find("<h2 ").map_or(html.len(), |e| start + 1 + e);
    &html[start..end]
}

#[test]
fn report_is_self_contained_with_every_section_measured() {
    let (_, html) = mnist_report();
    // Nothing outside the page: links are in-page anchors or data: URIs, no scripts, stylesheets or imports,
    // and a policy that would make the browser refuse anything else.
    for attr in ["src", "href", "xlink:href"] {
        for v in attribute_values(html, attr) {
            assert!(
                v.starts_with('#') || v.starts_with("data:"),
                "{attr}=\"{v}\" refers outside the page"
            );
        }
    }
    assert!(!html.contains("http://") && !html.contains("https://"));
    for bad in [
        "<script", "<link", "<iframe", "<object", "<embed", "@import",
    ] {
        assert!(!html.contains(bad), "the page contains {bad}");
    }
    for (i, _) in html.match_indices("url(") {
        assert!(
            html[i + 4..].starts_with('#'),
            "url() refers outside the page: {}",
            &html[i..(i + 40).min(html.len())]
        );
    }
    assert!(html.contains("Content-Security-Policy") && html.contains("default-src 'none'"));

    let svgs = |sec: &str| section(html, sec).matches("<svg ").count();
    assert!(svgs("graph") >= 1, "operator graph");
    assert!(svgs("layers") >= 1, "per-layer bars");
    assert!(svgs("arena") >= 1, "memory timeline");
    assert!(svgs("quality") >= 1, "per-layer quality bars");
    assert_eq!(
        svgs("weights"),
        3,
        "one histogram per weighted layer (conv1, conv2, fc)"
    );
    assert!(svgs("accuracy") >= 1, "accuracy curve");
    // The unpruned model and the five pruned fractions the report compiles (0.1 .. 0.5).
    assert_eq!(
        section(html, "accuracy").matches("<circle").count(),
        6,
        "one point per prune fraction"
    );
    assert!(svgs("fit") >= 1, "fit bars");
    for sec in ["quality", "accuracy", "fit"] {
        assert!(
            !section(html, sec).contains("class=\"note\">No")
                && !section(html, sec).contains("toolchain"),
            "section {sec} was not measured:\n{}",
            section(html, sec)
        );
    }

    // The graph names the ops and their kernels; the timeline draws a rectangle per tensor and the lower bound.
    let graph = section(html, "graph");
    assert!(graph.contains("conv2d_s8 (dot)"), "{graph}");
    assert!(graph.contains("marker-end"), "edges are drawn as arrows");
    let arena = section(html, "arena");
    assert!(arena.contains("lower bound") && arena.matches("<rect ").count() > 8);
    // Per-layer quality: SQNR, cosine and max error for every int8 layer, plausible values.
    let quality = section(html, "quality");
    assert!(
        quality.contains("SQNR") && quality.contains("cosine") && quality.contains("max abs error")
    );
    // Accuracy: float (tract) and compiled (Kiln's runtime), both high on MNIST and within a point of each other.
    let acc = section(html, "accuracy");
    let cell = |row: &str| -> f64 {
        let at = acc
            .find(row)
            .unwrap_or_else(|| panic!("no row '{row}' in {acc}"));
        let rest = &acc[at..];
        let start = rest.find("<td>").expect("value cell") + 4;
        let end = rest[start..].find('%').expect("percent") + start;
        rest[start..end].parse().expect("a percentage")
    };
    let (float, int8) = (cell("float (ONNX, tract)"), cell("compiled (Kiln runtime)"));
    assert!(
        float > 95.0 && int8 > 95.0 && (float - int8).abs() < 1.0,
        "float {float}%, int8 {int8}%"
    );
    let fit = section(html, "fit");
    assert!(
        fit.contains("mps2-an386") && fit.contains("fits ("),
        "{fit}"
    );
}

/// Chromium's binary, or a failure saying how to install it.
fn chromium() -> &'static str {
    for name in ["chromium", "chromium-browser"] {
        let ok = Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return name;
        }
    }
    panic!("chromium is not installed: apt-get install chromium (scripts/test.sh installs it)");
}

/// Renders `page` in headless Chromium to a PNG; returns the PNG path and the console messages it logged
/// (Chromium logs every console message and uncaught error to stderr as `CONSOLE` lines).
fn render(page: &Path, dir: &Path) -> (PathBuf, Vec<String>) {
    let png = dir.join(format!(
        "{}.png",
        page.file_stem().and_then(|s| s.to_str()).unwrap_or("page")
    ));
    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("file://{}", s(page)).replace(' ', "%20");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,3000",
        ])
        .arg(format!("--user-data-dir={}", s(profile.path())))
        .arg(format!("--screenshot={}", s(&png)))
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut s);
        s
    });
    let started = Instant::now();
    while child.try_wait().expect("wait for chromium").is_none() {
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!(
                "chromium did not finish rendering {} in 180 s",
                page.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = reader.join().expect("stderr reader");
    let console = log
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .map(str::to_owned)
        .collect();
    assert!(png.is_file(), "chromium wrote no screenshot:\n{log}");
    (png, console)
}

/// Pixels of the image within a small distance of `hex` (`#rrggbb`).
fn count_colour(img: &[[u8; 3]], hex: &str) -> usize {
    let c = u32::from_str_radix(&hex[1..], 16).expect("colour");
    let want = [(c >> 16) as u8, (c >> 8) as u8, c as u8];
    img.iter()
        .filter(|p| p.iter().zip(want).all(|(&a, b)| a.abs_diff(b) <= 6))
        .count()
}

fn decode_rgb(png_path: &Path) -> (usize, usize, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).expect("open screenshot"),
    ));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("png size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "8-bit screenshot");
    let channels = info.color_type.samples();
    let px = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| match channels {
            1 | 2 => [p[0]; 3],
            _ => [p[0], p[1], p[2]],
        })
        .collect();
    (info.width as usize, info.height as usize, px)
}

#[test]
fn report_renders_in_chromium_without_console_errors_and_draws_its_charts() {
    let (page, html) = mnist_report();
    let dir = page.parent().expect("report dir");

    // Negative control: the same page with an uncaught error and an outside reference must be caught.
    let broken = dir.join("broken.html");
    std::fs::write(
        &broken,
        html.replace(
            "</body>",
            r#"<script>undefinedFunction();</script><img src="https://example.invalid/x.png"></body>"#,
        ),
    )
    .expect("write control page");
    let (_, caught) = render(&broken, dir);
    assert!(
        caught.len() >= 2,
        "the console check missed a deliberate error and a deliberate outside reference: {caught:?}"
    );

    let (png_path, console) = render(page, dir);
    assert!(
        console.is_empty(),
        "the report logged to the console: {console:#?}"
    );

    let (w, h, img) = decode_rgb(&png_path);
    assert_eq!((w, h), (1200, 3000), "screenshot size");
    let white = img.iter().filter(|p| p.iter().all(|&c| c >= 250)).count();
    assert!(
        img.len() - white > img.len() / 20,
        "the page is almost blank: {} of {} pixels drawn",
        img.len() - white,
        img.len()
    );
    // Every chart drew in its colours: bars (MACs, weights, activations, SQNR, cosine, max error), histogram
    // bars and the timeline's lower bound.
    for (what, c, at_least) in [
        ("MACs bars", colour::MACS, 300),
        ("weight bars", colour::WEIGHTS, 300),
        ("activation bars", colour::ACTIVATIONS, 300),
        ("SQNR bars", colour::SQNR, 300),
        ("cosine bars", colour::COSINE, 300),
        ("error bars", colour::ERROR, 300),
        ("weight histograms", colour::HISTOGRAM, 300),
        (
            "arena lower bound (a dashed line across the timeline)",
            colour::LOWER_BOUND,
            500,
        ),
        ("timeline tensors", colour::TENSORS[1], 300),
    ] {
        let n = count_colour(&img, c);
        assert!(
            n >= at_least,
            "{what} ({c}): only {n} pixels in the screenshot"
        );
    }
}

/// A `.kiln` file has no float model: the quality section says so. Without a Cortex-M toolchain (here: Debian's
/// forced and unreachable) the page is still written and says why the fit is missing.
#[test]
fn report_on_a_kiln_file_without_a_toolchain_says_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = repo();
    let model = dir.path().join("mnist.kiln");
    let o = kiln(&[
        "compile",
        s(&r.join("models/mnist_cnn.onnx")),
        "--calib",
        s(&r.join("data/mnist_calib.npy")),
        "-o",
        s(&model),
        "--layers",
        "--report",
        s(&dir.path().join("report.json")),
    ]);
    assert_exit(&o, 0, "kiln compile");
    // `--layers`: the per-layer debugger table, one line per int8 layer, the lowest SQNR marked; the JSON
    // report carries the same figures.
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("SQNR dB") && stdout.contains("cosine") && stdout.contains("max |err|")
    );
    assert_eq!(stdout.matches("<- lowest").count(), 1, "{stdout}");
    for layer in ["conv1", "pool1", "conv2", "pool2", "fc"] {
        assert!(stdout.contains(layer), "{layer} in {stdout}");
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("report.json")).expect("report json"),
    )
    .expect("json");
    for l in json["agreement"]["per_layer"]
        .as_array()
        .expect("per_layer")
    {
        let cos = l["cosine"].as_f64().expect("cosine");
        assert!(cos > 0.99 && cos <= 1.0 + 1e-9, "{l}");
        assert!(l["sqnr_db"].is_number() && l["max_abs_error"].is_number());
    }
    let out = dir.path().join("r.html");
    let empty = dir.path().join("no-tools");
    std::fs::create_dir(&empty).expect("empty dir");
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["report", s(&model), "--eval"])
        .arg(r.join("data/mnist_test.npz"))
        .arg("-o")
        .arg(&out)
        .env("KILN_TOOLCHAIN", "debian")
        .env("PATH", &empty)
        .output()
        .expect("run kiln");
    assert_exit(&o, 0, "kiln report on a .kiln file");
    assert!(
        text(&o.stderr).contains("no fit section"),
        "{}",
        text(&o.stderr)
    );
    let html = std::fs::read_to_string(&out).expect("read the report");
    let quality = section(&html, "quality");
    assert!(
        quality.contains("class=\"note\"") && quality.contains(".kiln file"),
        "{quality}"
    );
    let fit = section(&html, "fit");
    assert!(
        fit.contains("class=\"note\"") && fit.contains("toolchain"),
        "{fit}"
    );
    // The rest is measured from the file alone.
    assert!(section(&html, "arena").contains("lower bound 7,840 B"));
    assert_eq!(section(&html, "weights").matches("<svg ").count(), 3);
    assert!(section(&html, "accuracy").contains("compiled (Kiln runtime)"));
    assert!(!section(&html, "accuracy").contains("float (ONNX, tract)"));
}

#[test]
fn bad_input_exits_2_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("r.html");
    let r = repo();
    let o = kiln(&["report", s(&r.join("models/missing.onnx")), "-o", s(&out)]);
    assert_exit(&o, 2, "missing model");
    let o = kiln(&[
        "report",
        s(&r.join("models/mnist_cnn.onnx")),
        "--board",
        "no-such-board",
        "-o",
        s(&out),
    ]);
    assert_exit(&o, 2, "unknown board");
    let o = kiln(&[
        "report",
        s(&r.join("models/mnist_cnn.onnx")),
        "--eval",
        s(&r.join("data/mnist_calib.npy")),
        "-o",
        s(&out),
    ]);
    assert_exit(&o, 2, "unlabelled eval data");
    assert!(!out.exists(), "nothing is written on failure");
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("list").count(),
        0,
        "no temporary file left behind"
    );
}
