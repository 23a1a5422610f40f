//! Inline SVG charts for `kiln report`: plain strings, no scripts, no external references, every number drawn
//! from the data handed in. Geometry that a reader must be able to trust (the memory timeline) is computed by
//! a separate function that the tests check.

use std::fmt::Write as _;

use super::layout::{Layout, Live, Source};
use crate::inspect::thousands;

/// Chart colours (the page's CSS and the screenshot test use the same values).
pub mod colour {
    pub const MACS: &str = "#2b6cb0";
    pub const WEIGHTS: &str = "#dd6b20";
    pub const ACTIVATIONS: &str = "#2f855a";
    pub const SQNR: &str = "#6b46c1";
    pub const COSINE: &str = "#319795";
    pub const ERROR: &str = "#c53030";
    pub const HISTOGRAM: &str = "#2c5282";
    pub const CURVE: &str = "#b7791f";
    pub const LOWER_BOUND: &str = "#e53e3e";
    pub const GRID: &str = "#cbd5e0";
    pub const INK: &str = "#1a202c";
    pub const MUTED: &str = "#718096";
    /// Tensors in the memory timeline, by op index.
    pub const TENSORS: [&str; 8] = [
        "#90cdf4", "#fbd38d", "#9ae6b4", "#d6bcfa", "#feb2b2", "#81e6d9", "#fbb6ce", "#c3dafe",
    ];
}

/// Escapes text for HTML and SVG (element content and attribute values).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A label no longer than `n` characters (an ellipsis marks the cut).
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// An axis-aligned rectangle in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    /// Whether the interiors intersect (touching edges do not), with `eps` pixels of slack for rounding.
    pub fn overlaps(&self, o: &Rect, eps: f64) -> bool {
        self.x + eps < o.x + o.w
            && o.x + eps < self.x + self.w
            && self.y + eps < o.y + o.h
            && o.y + eps < self.y + self.h
    }
}

/// An SVG document under construction.
struct Svg {
    width: f64,
    height: f64,
    body: String,
}

impl Svg {
    fn new(width: f64, height: f64) -> Self {
        Svg {
            width,
            height,
            body: String::new(),
        }
    }

    fn rect(&mut self, r: Rect, fill: &str, tip: Option<&str>) {
        let _ = write!(
            self.body,
            r#"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="{fill}""#,
            r.x,
            r.y,
            r.w.max(0.0),
            r.h.max(0.0)
        );
        match tip {
            Some(t) => {
                let _ = write!(self.body, "><title>{}</title></rect>", esc(t));
            }
            None => self.body.push_str("/>"),
        }
    }

    fn text(&mut self, x: f64, y: f64, anchor: &str, class: &str, s: &str) {
        let _ = write!(
            self.body,
            r#"<text x="{x:.2}" y="{y:.2}" text-anchor="{anchor}" class="{class}">{}</text>"#,
            esc(s)
        );
    }

    fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, extra: &str) {
        let _ = write!(
            self.body,
            r#"<line x1="{x1:.2}" y1="{y1:.2}" x2="{x2:.2}" y2="{y2:.2}" stroke="{stroke}" {extra}/>"#
        );
    }

    fn raw(&mut self, s: &str) {
        self.body.push_str(s);
    }

    fn finish(self, label: &str) -> String {
        format!(
            r#"<svg width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" role="img" aria-label="{l}">{b}</svg>"#,
            w = self.width,
            h = self.height,
            l = esc(label),
            b = self.body
        )
    }
}

/// One column of bars in [`bars`]: a value per row, the text shown beside it, and the range the bar spans.
pub struct Series {
    pub name: String,
    pub colour: &'static str,
    pub values: Vec<f64>,
    pub texts: Vec<String>,
    /// Values mapped to zero and full length; `None`: from 0 to the largest finite value. Values outside are
    /// clamped (an infinite value draws a full bar).
    pub domain: Option<(f64, f64)>,
}

const ROW: f64 = 18.0;

/// Horizontal bars, one row per label and one column per series, sharing the label column.
pub fn bars(title: &str, labels: &[String], series: &[Series]) -> String {
    let (label_w, bar_w, text_w, gap) = (190.0, 190.0, 76.0, 18.0);
    let col_w = bar_w + text_w + gap;
    let top = 40.0;
    let width = label_w + col_w * series.len() as f64;
    let height = top + ROW * labels.len() as f64 + 8.0;
    let mut svg = Svg::new(width, height);
    svg.text(0.0, 14.0, "start", "title", title);
    for (r, label) in labels.iter().enumerate() {
        let y = top + ROW * r as f64;
        if r % 2 == 1 {
            svg.rect(
                Rect {
                    x: 0.0,
                    y,
                    w: width,
                    h: ROW,
                },
                "#f7fafc",
                None,
            );
        }
        svg.text(label_w - 8.0, y + 13.0, "end", "label", &clip(label, 28));
    }
    for (c, s) in series.iter().enumerate() {
        let x0 = label_w + col_w * c as f64;
        svg.text(x0, top - 8.0, "start", "axis", &s.name);
        let finite_max = s
            .values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let (lo, hi) = s.domain.unwrap_or((0.0, finite_max));
        let span = if hi > lo { hi - lo } else { 1.0 };
        svg.line((x0, top), (x0, height - 8.0), colour::GRID, "");
        for (r, &v) in s.values.iter().enumerate() {
            let y = top + ROW * r as f64;
            let frac = if v.is_nan() {
                0.0
            } else if v == f64::INFINITY {
                1.0
            } else {
                ((v - lo) / span).clamp(0.0, 1.0)
            };
            let text = s.texts.get(r).cloned().unwrap_or_default();
            let tip = format!("{}: {} {}", labels.get(r).map_or("", |l| l), s.name, text);
            svg.rect(
                Rect {
                    x: x0,
                    y: y + 3.0,
                    w: bar_w * frac,
                    h: ROW - 6.0,
                },
                s.colour,
                Some(&tip),
            );
            svg.text(x0 + bar_w * frac + 4.0, y + 13.0, "start", "value", &text);
        }
    }
    svg.finish(title)
}

/// Where the memory timeline draws things: `rects[i]` is `lives[i]`.
#[derive(Clone, Debug)]
pub struct TimelineGeometry {
    pub left: f64,
    pub top: f64,
    pub plot_w: f64,
    pub plot_h: f64,
    /// Pixels per half-slot and per arena byte.
    pub half_w: f64,
    pub byte_h: f64,
    pub rects: Vec<Rect>,
}

impl TimelineGeometry {
    /// The y of arena offset `bytes`.
    pub fn y(&self, bytes: f64) -> f64 {
        self.top + bytes * self.byte_h
    }

    /// The x of half-slot `h`.
    pub fn x(&self, h: f64) -> f64 {
        self.left + h * self.half_w
    }
}

/// Places every tensor's stay: x from its first to its last half-slot, y from its arena offset down by its
/// bytes, both to scale. Two stays that overlap in time and in bytes would overlap on the page (the runtime's
/// loader refuses such models), so a valid plan draws disjoint rectangles.
pub fn timeline_geometry(lives: &[Live], slots: u32, arena: u32) -> TimelineGeometry {
    let (left, top, plot_w, plot_h) = (70.0, 30.0, 900.0, 340.0);
    let half_w = plot_w / (2.0 * f64::from(slots.max(1)));
    let byte_h = plot_h / f64::from(arena.max(1));
    let rects = lives
        .iter()
        .map(|l| Rect {
            x: left + f64::from(l.start) * half_w,
            y: top + f64::from(l.offset) * byte_h,
            w: f64::from(l.end - l.start) * half_w,
            h: f64::from(l.bytes) * byte_h,
        })
        .collect();
    TimelineGeometry {
        left,
        top,
        plot_w,
        plot_h,
        half_w,
        byte_h,
        rects,
    }
}

/// Round tick steps (1, 2, 5 × 10^k) giving about `n` ticks up to `max`.
fn ticks(max: f64, n: usize) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0];
    }
    let raw = max / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag);
    (0..)
        .map(|i| i as f64 * step)
        .take_while(|&v| v <= max + step * 1e-9)
        .collect()
}

/// The arena over the op sequence: one rectangle per tensor (x = op index, y = arena offset), the bytes live
/// in each slot as a step line, and the lower bound (the most bytes ever live together).
pub fn memory_timeline(layout: &Layout) -> String {
    let g = timeline_geometry(&layout.lives, layout.slots, layout.arena_bytes);
    let live = layout.live_bytes();
    let lower = layout.lower_bound();
    let height = g.top + g.plot_h + 56.0;
    let width = g.left + g.plot_w + 170.0;
    let mut svg = Svg::new(width, height);
    svg.text(
        0.0,
        14.0,
        "start",
        "title",
        "Arena occupancy over the op sequence",
    );
    // Frame and byte ticks.
    svg.rect(
        Rect {
            x: g.left,
            y: g.top,
            w: g.plot_w,
            h: g.plot_h,
        },
        "#fdfdfd",
        None,
    );
    for t in ticks(f64::from(layout.arena_bytes), 6) {
        let y = g.y(t);
        svg.line(
            (g.left - 4.0, y),
            (g.left + g.plot_w, y),
            colour::GRID,
            r#"stroke-width="0.5""#,
        );
        svg.text(g.left - 6.0, y + 4.0, "end", "axis", &thousands(t as u64));
    }
    // Slot labels: "in", op indices, "out" (thinned when crowded).
    let every = (layout.slots as usize).div_ceil(40).max(1);
    for s in 0..layout.slots {
        let x = g.x(f64::from(2 * s) + 1.0);
        let label = if s == 0 {
            "in".to_owned()
        } else if s + 1 == layout.slots {
            "out".to_owned()
        } else if (s as usize - 1).is_multiple_of(every) {
            (s - 1).to_string()
        } else {
            continue;
        };
        svg.text(x, g.top + g.plot_h + 14.0, "middle", "axis", &label);
    }
    svg.text(
        g.left + g.plot_w / 2.0,
        g.top + g.plot_h + 32.0,
        "middle",
        "axis",
        "op index (time) →",
    );
    svg.text(g.left - 6.0, g.top - 8.0, "end", "axis", "offset (B)");
    for (l, r) in layout.lives.iter().zip(&g.rects) {
        let t = &layout.tensors[l.tensor as usize];
        let fill = colour::TENSORS[t.producer.map_or(0, |p| p + 1) % colour::TENSORS.len()];
        let who = match t.producer {
            Some(p) => format!("output of op {p} '{}'", layout.ops[p].name),
            None if t.name.is_empty() => "graph input".to_owned(),
            None => format!("graph input '{}'", t.name),
        };
        let tip = format!(
            "tensor {} ({who}): {} {:?}, {} B at offset {}",
            t.index,
            t.dtype,
            t.shape,
            thousands(u64::from(l.bytes)),
            thousands(u64::from(l.offset))
        );
        svg.rect(*r, fill, Some(&tip));
        svg.raw(&format!(
            r##"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="none" stroke="#4a5568" stroke-width="0.6"/>"##,
            r.x, r.y, r.w, r.h
        ));
        if r.h >= 11.0 && r.w >= 36.0 {
            svg.text(
                r.x + 3.0,
                r.y + 10.0,
                "start",
                "small",
                &format!("t{}", t.index),
            );
        }
    }
    // Bytes live per slot (a step line) and the lower bound.
    let mut d = String::new();
    for (s, &b) in live.iter().enumerate() {
        let (x0, x1) = (g.x(2.0 * s as f64), g.x(2.0 * s as f64 + 2.0));
        let y = g.y(f64::from(b));
        let _ = write!(
            d,
            "{}{x0:.2},{y:.2} L{x1:.2},{y:.2} ",
            if s == 0 { "M" } else { "L" }
        );
    }
    svg.raw(&format!(
        r#"<path d="{}" fill="none" stroke="{}" stroke-width="1.5"><title>bytes live at each op</title></path>"#,
        d.trim_end(),
        colour::INK
    ));
    // The arena's end, then the lower bound over it (dashed, so both show when they coincide).
    let (ya, yl) = (g.y(f64::from(layout.arena_bytes)), g.y(f64::from(lower)));
    let close = (ya - yl).abs() < 14.0;
    svg.line(
        (g.left, ya),
        (g.left + g.plot_w, ya),
        colour::INK,
        r#"stroke-width="1.5""#,
    );
    svg.text(
        g.left + g.plot_w + 6.0,
        if close { ya + 14.0 } else { ya + 4.0 },
        "start",
        "axis",
        &format!("arena {} B", thousands(u64::from(layout.arena_bytes))),
    );
    svg.line(
        (g.left, yl),
        (g.left + g.plot_w, yl),
        colour::LOWER_BOUND,
        r#"stroke-width="2" stroke-dasharray="6 4""#,
    );
    svg.text(
        g.left + g.plot_w + 6.0,
        if close { yl - 2.0 } else { yl + 4.0 },
        "start",
        "lb",
        &format!("lower bound {} B", thousands(u64::from(lower))),
    );
    svg.finish("Arena occupancy over the op sequence")
}

/// One small histogram: `counts` over equal bins from `lo` to `hi`.
pub fn histogram(title: &str, counts: &[u64], lo: f64, hi: f64) -> String {
    let (w, h, left, top, bottom) = (260.0, 120.0, 8.0, 22.0, 18.0);
    let plot_w = w - 2.0 * left;
    let plot_h = h - top - bottom;
    let mut svg = Svg::new(w, h);
    svg.text(left, 14.0, "start", "label", &clip(title, 40));
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bw = plot_w / counts.len().max(1) as f64;
    let bin = (hi - lo) / counts.len().max(1) as f64;
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let bh = plot_h * c as f64 / max;
        let from = lo + bin * i as f64;
        svg.rect(
            Rect {
                x: left + bw * i as f64,
                y: top + plot_h - bh,
                w: bw.max(1.0),
                h: bh,
            },
            colour::HISTOGRAM,
            Some(&format!("[{from:.4}, {:.4}): {c}", from + bin)),
        );
    }
    svg.line(
        (left, top + plot_h),
        (left + plot_w, top + plot_h),
        colour::MUTED,
        "",
    );
    if lo < 0.0 && hi > 0.0 {
        let x0 = left + plot_w * (-lo) / (hi - lo);
        svg.line(
            (x0, top),
            (x0, top + plot_h),
            colour::MUTED,
            r#"stroke-dasharray="2 2""#,
        );
    }
    let fmt = |v: f64| {
        if v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.3}")
        }
    };
    svg.text(left, h - 4.0, "start", "axis", &fmt(lo));
    svg.text(left + plot_w, h - 4.0, "end", "axis", &fmt(hi));
    svg.finish(title)
}

/// Accuracy (%) against prune fraction: a line through `points` (sorted by fraction), with the float model's
/// accuracy as a dashed reference. Structured pruning feeds one point per fraction it compiles; without it the
/// only point is the unpruned model at fraction 0.
pub fn accuracy_curve(points: &[(f64, f64)], float_top1: Option<f64>) -> String {
    let (w, h, left, top, bottom, right) = (560.0, 260.0, 56.0, 30.0, 40.0, 120.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let mut pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let x_max = pts.iter().map(|p| p.0).fold(0.5f64, f64::max).min(1.0);
    let lowest = pts
        .iter()
        .map(|p| p.1)
        .chain(float_top1)
        .fold(1.0f64, f64::min);
    let y_min = ((lowest - 0.05) * 10.0).floor().max(0.0) / 10.0;
    let x = |v: f64| left + plot_w * v / x_max;
    let y = |v: f64| top + plot_h * (1.0 - (v - y_min) / (1.0 - y_min).max(1e-9));
    let mut svg = Svg::new(w, h);
    svg.text(
        0.0,
        14.0,
        "start",
        "title",
        "Top-1 accuracy vs prune fraction",
    );
    for t in ticks(1.0 - y_min, 4) {
        let v = y_min + t;
        svg.line(
            (left, y(v)),
            (left + plot_w, y(v)),
            colour::GRID,
            r#"stroke-width="0.5""#,
        );
        svg.text(
            left - 6.0,
            y(v) + 4.0,
            "end",
            "axis",
            &format!("{:.0}%", v * 100.0),
        );
    }
    for t in ticks(x_max, 5) {
        svg.line(
            (x(t), top + plot_h),
            (x(t), top + plot_h + 4.0),
            colour::MUTED,
            "",
        );
        svg.text(
            x(t),
            top + plot_h + 16.0,
            "middle",
            "axis",
            &format!("{t:.1}"),
        );
    }
    svg.text(
        left + plot_w / 2.0,
        h - 6.0,
        "middle",
        "axis",
        "fraction of channels pruned",
    );
    svg.line((left, top), (left, top + plot_h), colour::MUTED, "");
    svg.line(
        (left, top + plot_h),
        (left + plot_w, top + plot_h),
        colour::MUTED,
        "",
    );
    if let Some(f) = float_top1 {
        svg.line(
            (left, y(f)),
            (left + plot_w, y(f)),
            colour::MUTED,
            r#"stroke-dasharray="5 4""#,
        );
        svg.text(
            left + plot_w + 6.0,
            y(f) + 4.0,
            "start",
            "axis",
            &format!("float {:.2}%", f * 100.0),
        );
    }
    if pts.len() > 1 {
        let d: Vec<String> = pts
            .iter()
            .map(|&(a, b)| format!("{:.2},{:.2}", x(a), y(b)))
            .collect();
        svg.raw(&format!(
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            d.join(" "),
            colour::CURVE
        ));
    }
    for &(a, b) in &pts {
        svg.raw(&format!(
            r#"<circle cx="{:.2}" cy="{:.2}" r="5" fill="{}"><title>pruned {:.2}: top-1 {:.2}%</title></circle>"#,
            x(a),
            y(b),
            colour::CURVE,
            a,
            b * 100.0
        ));
        svg.text(
            x(a) + 8.0,
            y(b) - 8.0,
            "start",
            "value",
            &format!("{:.2}%", b * 100.0),
        );
    }
    svg.finish("Top-1 accuracy vs prune fraction")
}

/// One stacked bar of a fit chart: named parts against a capacity.
pub struct Stack {
    pub name: String,
    pub parts: Vec<(String, u64, &'static str)>,
    pub capacity: u64,
}

/// Flash and RAM against the board: stacked parts, the capacity as the full bar width.
pub fn fit(stacks: &[Stack]) -> String {
    let (left, bar_w, bar_h, gap) = (70.0, 760.0, 26.0, 46.0);
    let height = 20.0 + gap * stacks.len() as f64;
    let mut svg = Svg::new(left + bar_w + 150.0, height);
    for (i, s) in stacks.iter().enumerate() {
        let y = 14.0 + gap * i as f64;
        let need: u64 = s.parts.iter().map(|p| p.1).sum();
        let scale = bar_w / s.capacity.max(need).max(1) as f64;
        svg.text(left - 8.0, y + 18.0, "end", "label", &s.name);
        svg.rect(
            Rect {
                x: left,
                y,
                w: s.capacity as f64 * scale,
                h: bar_h,
            },
            "#edf2f7",
            Some(&format!(
                "{}: {} B available",
                s.name,
                thousands(s.capacity)
            )),
        );
        let mut x = left;
        for (name, bytes, fill) in &s.parts {
            let w = *bytes as f64 * scale;
            svg.rect(
                Rect { x, y, w, h: bar_h },
                fill,
                Some(&format!("{name}: {} B", thousands(*bytes))),
            );
            if w > 60.0 {
                svg.text(x + 4.0, y + 17.0, "start", "inbar", name);
            }
            x += w;
        }
        let cap_x = left + s.capacity as f64 * scale;
        svg.line(
            (cap_x, y - 4.0),
            (cap_x, y + bar_h + 4.0),
            colour::INK,
            r#"stroke-width="2""#,
        );
        let verdict = if need <= s.capacity {
            format!(
                "{:.1}% used",
                100.0 * need as f64 / s.capacity.max(1) as f64
            )
        } else {
            format!("{} B over", thousands(need - s.capacity))
        };
        svg.text(left + bar_w + 8.0, y + 18.0, "start", "value", &verdict);
    }
    svg.finish("Flash and RAM against the board")
}

/// The operator graph: one box per op in execution order (kind, kernel, output shape, MACs), graph inputs
/// above and outputs below; an arrow per tensor an op reads, straight to the next op or arched at the side when
/// it skips ahead (labelled, with its shape and bytes as a tooltip).
pub fn graph(layout: &Layout) -> String {
    let (left, box_w, box_h, row_h) = (20.0, 560.0, 40.0, 62.0);
    let n = layout.ops.len();
    let rows = n + 2;
    let arc_room = 230.0;
    let width = left + box_w + arc_room;
    let height = row_h * rows as f64 + 10.0;
    let top = |row: usize| 10.0 + row_h * row as f64;
    let mut svg = Svg::new(width, height);
    svg.raw(&format!(
        r#"<defs><marker id="kiln-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{}"/></marker></defs>"#,
        colour::MUTED
    ));
    let shape = |t: u16| {
        layout
            .tensors
            .get(t as usize)
            .map(|t| format!("{} {:?}", t.dtype, t.shape))
            .unwrap_or_default()
    };
    // Graph inputs and outputs share their row, side by side.
    let io_box = |i: usize, count: usize| -> (f64, f64) {
        let w = box_w / count.max(1) as f64;
        (left + w * i as f64 + 4.0, w - 8.0)
    };
    let io_row = |svg: &mut Svg, list: &[u16], row: usize, what: &str| {
        for (i, &t) in list.iter().enumerate() {
            let (x, w) = io_box(i, list.len());
            let name = layout
                .tensors
                .get(t as usize)
                .map_or("", |t| t.name.as_str());
            svg.raw(&format!(
                r##"<rect x="{x:.2}" y="{:.2}" width="{w:.2}" height="{box_h}" rx="18" fill="#edf2f7" stroke="#a0aec0"/>"##,
                top(row)
            ));
            svg.text(
                x + w / 2.0,
                top(row) + 25.0,
                "middle",
                "label",
                &format!("{what} '{}': {}", clip(name, 24), shape(t)),
            );
        }
    };
    io_row(&mut svg, &layout.inputs, 0, "input");
    io_row(&mut svg, &layout.outputs, n + 1, "output");

    // Edges first, so boxes draw over their ends.
    let mut arcs = 0usize;
    let mut edge = |svg: &mut Svg, from: (usize, f64), to: (usize, f64), t: u16| {
        let tensor = layout.tensors.get(t as usize);
        let tip = tensor.map_or(String::new(), |tt| {
            format!(
                "tensor {t}: {}, {} B",
                shape(t),
                thousands(u64::from(tt.bytes))
            )
        });
        let (fr, fx) = from;
        let (tr, tx) = to;
        if tr == fr + 1 {
            let (y0, y1) = (top(fr) + box_h, top(tr));
            svg.raw(&format!(
                r#"<line x1="{fx:.2}" y1="{y0:.2}" x2="{tx:.2}" y2="{y1:.2}" stroke="{}" stroke-width="1.5" marker-end="url(#kiln-arrow)"><title>{}</title></line>"#,
                colour::MUTED,
                esc(&tip)
            ));
            svg.text(tx + 8.0, y0 + 15.0, "start", "small", &shape(t));
        } else {
            let bulge = 40.0 + 26.0 * (arcs % 7) as f64;
            arcs += 1;
            let x = left + box_w;
            let (y0, y1) = (top(fr) + box_h / 2.0 + 6.0, top(tr) + box_h / 2.0 - 6.0);
            svg.raw(&format!(
                r#"<path d="M{x:.2},{y0:.2} C{:.2},{y0:.2} {:.2},{y1:.2} {x:.2},{y1:.2}" fill="none" stroke="{}" stroke-width="1.5" marker-end="url(#kiln-arrow)"><title>{}</title></path>"#,
                x + bulge,
                x + bulge,
                colour::MUTED,
                esc(&tip)
            ));
            svg.text(
                x + bulge * 0.75 + 4.0,
                (y0 + y1) / 2.0 + 4.0,
                "start",
                "small",
                &shape(t),
            );
        }
    };
    let centre = left + box_w / 2.0;
    let source_of = |t: u16| -> (usize, f64) {
        match layout.tensors.get(t as usize).and_then(|tt| tt.producer) {
            Some(p) => (p + 1, centre),
            None => {
                let i = layout.inputs.iter().position(|&x| x == t).unwrap_or(0);
                let (x, w) = io_box(i, layout.inputs.len());
                (0, x + w / 2.0)
            }
        }
    };
    for op in &layout.ops {
        for s in &op.inputs {
            if let Source::Tensor(t) = s {
                edge(&mut svg, source_of(*t), (op.index + 1, centre), *t);
            }
        }
    }
    for (i, &o) in layout.outputs.iter().enumerate() {
        let (x, w) = io_box(i, layout.outputs.len());
        // An output that aliases an op's output (a final reshape) comes from the op writing its bytes.
        let from = layout
            .tensors
            .get(o as usize)
            .and_then(|t| t.producer)
            .or_else(|| {
                let t = layout.tensors.get(o as usize)?;
                layout
                    .ops
                    .iter()
                    .rev()
                    .find(|op| {
                        layout
                            .tensors
                            .get(op.output as usize)
                            .is_some_and(|p| p.offset == t.offset)
                    })
                    .map(|op| op.index)
            });
        if let Some(p) = from {
            edge(&mut svg, (p + 1, centre), (n + 1, x + w / 2.0), o);
        }
    }
    for op in &layout.ops {
        let y = top(op.index + 1);
        let fill = colour::TENSORS[(op.index + 1) % colour::TENSORS.len()];
        svg.raw(&format!(
            r##"<rect x="{left:.2}" y="{y:.2}" width="{box_w:.2}" height="{box_h}" rx="4" fill="{fill}" stroke="#4a5568"><title>{}</title></rect>"##,
            esc(&format!("op {} '{}'", op.index, op.name))
        ));
        let kind = match op.kernel {
            Some(k) => format!("{} ({k})", op.kind),
            None => op.kind.to_owned(),
        };
        svg.text(
            left + 8.0,
            y + 16.0,
            "start",
            "opkind",
            &format!(
                "#{} {kind}{}",
                op.index,
                if op.in_place { ", in place" } else { "" }
            ),
        );
        let consts: u32 = op
            .inputs
            .iter()
            .map(|s| match s {
                Source::Constant { bytes } => *bytes,
                Source::Tensor(_) => 0,
            })
            .sum();
        let mut detail = format!("{} → {}", clip(&op.name, 30), shape(op.output));
        if op.macs > 0 {
            let _ = write!(detail, ", {} MACs", thousands(op.macs));
        }
        if consts > 0 {
            let _ = write!(detail, ", {} B const", thousands(u64::from(consts)));
        }
        svg.text(left + 8.0, y + 32.0, "start", "small", &detail);
    }
    svg.finish("Operator graph")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, Buffer};

    fn lcg(seed: u32) -> impl FnMut(u32) -> u32 {
        let mut s = seed;
        move |m| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) % m
        }
    }

    /// Lives for buffers placed by the arena planner (slot `first` to `last`, inclusive).
    fn planned(bufs: &[Buffer]) -> (Vec<Live>, u32) {
        let p = plan(bufs);
        let lives = bufs
            .iter()
            .zip(&p.offsets)
            .enumerate()
            .map(|(i, (b, &o))| Live {
                tensor: i as u16,
                offset: o as u32,
                bytes: b.size as u32,
                start: 2 * b.first as u32,
                end: 2 * b.last as u32 + 2,
            })
            .collect();
        (lives, p.total as u32)
    }

    #[test]
    fn timeline_rectangles_of_a_plan_never_overlap_and_are_to_scale() {
        let mut next = lcg(99);
        for _ in 0..200 {
            let n = 1 + next(14) as usize;
            let bufs: Vec<Buffer> = (0..n)
                .map(|_| {
                    let first = next(10) as usize;
                    Buffer {
                        size: 1 + next(500) as usize,
                        first,
                        last: first + next(6) as usize,
                    }
                })
                .collect();
            let slots = bufs.iter().map(|b| b.last + 1).max().unwrap_or(1) as u32;
            let (lives, arena) = planned(&bufs);
            let g = timeline_geometry(&lives, slots, arena);
            for i in 0..lives.len() {
                let r = &g.rects[i];
                // To scale: offset and size in bytes, start and length in half-slots.
                assert!((r.y - g.y(f64::from(lives[i].offset))).abs() < 1e-9);
                assert!(
                    (r.h - f64::from(lives[i].bytes) * g.plot_h / f64::from(arena)).abs() < 1e-9
                );
                assert!(
                    (r.w - f64::from(lives[i].end - lives[i].start) * g.plot_w
                        / (2.0 * f64::from(slots)))
                    .abs()
                        < 1e-9
                );
                // Inside the plot.
                assert!(r.y >= g.top - 1e-9 && r.y + r.h <= g.top + g.plot_h + 1e-6);
                assert!(r.x >= g.left - 1e-9 && r.x + r.w <= g.left + g.plot_w + 1e-6);
                for j in i + 1..lives.len() {
                    let together = lives[i].start < lives[j].end && lives[j].start < lives[i].end;
                    if together {
                        assert!(
                            !r.overlaps(&g.rects[j], 1e-6),
                            "live together, drawn overlapping: {:?} {:?}",
                            lives[i],
                            lives[j]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn overlapping_rectangles_are_detected() {
        let a = Rect {
            x: 0.0,
            y: 0.0,
            w: 10.0,
            h: 10.0,
        };
        assert!(a.overlaps(
            &Rect {
                x: 5.0,
                y: 5.0,
                w: 10.0,
                h: 10.0
            },
            1e-6
        ));
        assert!(!a.overlaps(
            &Rect {
                x: 10.0,
                y: 0.0,
                w: 10.0,
                h: 10.0
            },
            1e-6
        ));
        assert!(!a.overlaps(
            &Rect {
                x: 0.0,
                y: 10.0,
                w: 10.0,
                h: 10.0
            },
            1e-6
        ));
    }

    #[test]
    fn bars_scale_to_the_largest_value() {
        let s = bars(
            "t",
            &["a".into(), "b".into()],
            &[Series {
                name: "MACs".into(),
                colour: colour::MACS,
                values: vec![50.0, 100.0],
                texts: vec!["50".into(), "100".into()],
                domain: None,
            }],
        );
        assert!(s.contains(r#"width="95.00""#), "{s}");
        assert!(s.contains(r#"width="190.00""#), "{s}");
    }

    #[test]
    fn accuracy_curve_draws_every_point() {
        let one = accuracy_curve(&[(0.0, 0.98)], Some(0.97));
        assert_eq!(one.matches("<circle").count(), 1);
        assert!(!one.contains("<polyline"), "one point, no line");
        let many = accuracy_curve(&[(0.5, 0.9), (0.0, 0.98), (0.25, 0.97)], None);
        assert_eq!(many.matches("<circle").count(), 3);
        // The line runs left to right (sorted by fraction), from the top-left point.
        let line = many.split("points=\"").nth(1).expect("polyline");
        let xs: Vec<f64> = line
            .split('"')
            .next()
            .expect("points")
            .split(' ')
            .map(|p| p.split(',').next().expect("x").parse().expect("number"))
            .collect();
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "{xs:?}");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(ticks(10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(7840.0, 6), vec![0.0, 2000.0, 4000.0, 6000.0]);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
    }
}
