#!/usr/bin/env python3
"""Synthesise spoken keywords and turn them into MLPerf Tiny KWS (DS-CNN) MFCC inputs.

Regenerate (from the repository root; needs Debian's `espeak-ng` and `pip install numpy`;
`onnxruntime` is optional and only used to score the float reference model on the result):

    apt-get install -y espeak-ng
    python3 scripts/make_kws_inputs.py
    # options: --model /work/shared/models/kws_dscnn_f32.onnx --out data/kws_speech.npz

Output: data/kws_speech.npz (compressed)
    x      float32 N x 49 x 10 x 1   MFCC features, NHWC like the model input without the batch axis
    y      int64   N                 intended class, in the model's output order (see LABELS)
    text   str     N                 the word spoken ("" for silence/noise)
    voice  str     N                 espeak-ng voice+variant, speed and pitch (or the noise kind)

Audio: espeak-ng (22.05 kHz) -> leading/trailing silence trimmed -> resampled to 16 kHz in numpy
(band-limited FFT resampling) -> placed near the middle of a 1 s clip of zeros; some clips get a
little white or pink noise mixed in. Silence examples are 1 s of white or pink noise, like the
white_noise/pink_noise files that Speech Commands cuts its silence class from (brown noise and
mains hum were tried: the model calls them "unknown", so they are not used).
Unknown examples are other Speech Commands words (bed, bird, cat, ...).

Front end (numpy re-implementation of mlcommons/tiny benchmark/training/keyword_spotting
get_dataset.py, feature_type "mfcc", which uses tf.signal):
    wav = wav / max(wav)                       (the maximum sample, not the maximum |sample|)
    |STFT|: 480-sample (30 ms) periodic Hann window, 320-sample (20 ms) hop, FFT 512, no padding
            -> 49 frames x 257 bins (magnitude, not power)
    mel:   tf.signal.linear_to_mel_weight_matrix(40, 257, 16000, 20 Hz, 4000 Hz)
           (HTK mel 1127 ln(1 + f/700), triangles in mel space, DC bin zeroed, no area normalisation)
    log(mel + 1e-6)
    MFCC:  tf.signal.mfccs_from_log_mel_spectrograms = unnormalised DCT-II * 1/sqrt(2 * 40),
           first 10 coefficients -> 49 x 10
This numpy front end was checked against TensorFlow 2.21's tf.signal on the same audio (throwaway
venv, not a dependency): mel matrix within 6e-6, MFCCs within 1.5e-5.

Labels: the reference trains on TensorFlow Datasets' `speech_commands`, whose label order is
    0 down, 1 go, 2 left, 3 no, 4 off, 5 on, 6 right, 7 stop, 8 up, 9 yes, 10 silence, 11 unknown
(`word_labels` in mlcommons/tiny keyword_spotting get_dataset.py). This is NOT the order of the
original TensorFlow speech_commands example ("silence, unknown, yes, no, ..."); the script also
scores that order so the difference is visible.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import wave

import numpy as np

SEED = 1234
SAMPLE_RATE = 16000
CLIP = 16000  # 1 s
WINDOW, HOP, NFFT = 480, 320, 512
NUM_MEL, MEL_LO, MEL_HI = 40, 20.0, 4000.0
NUM_MFCC = 10
NUM_FRAMES = 1 + (CLIP - WINDOW) // HOP  # 49

# tfds speech_commands order == MLPerf Tiny KWS model output order.
LABELS = ["down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes", "_silence_", "_unknown_"]
SILENCE, UNKNOWN = 10, 11
# Order used by the original TensorFlow speech_commands example (and ARM's ML-KWS-for-MCU).
TF_EXAMPLE_ORDER = ["_silence_", "_unknown_", "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]

KEYWORDS = LABELS[:10]
UNKNOWN_WORDS = ["bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
                 "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                 "backward", "forward", "follow", "learn", "visual"]

VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan",
          "en-gb-x-gbcwmd"]
VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "klatt4", "croak"]
# Whispered variants ("whisper", "whisperf") are left out: the model gets only ~30% of them right
# (Speech Commands has almost no whispering), which says more about espeak than about Kiln.

DEFAULT_MODEL = "/work/shared/models/kws_dscnn_f32.onnx"
REAL_INPUT = "/work/shared/data/kws_input_f32_1x49x10x1.npy"


# ----------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------

def espeak(text, voice, speed, pitch):
    """Return (samples float64 in [-1,1], sample rate) from espeak-ng."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", f.name, text],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with wave.open(f.name, "rb") as w:
            assert w.getnchannels() == 1 and w.getsampwidth() == 2, "espeak-ng should write 16-bit mono"
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float64) / 32768.0, rate


def resample(x, rate_in, rate_out):
    """Band-limited resampling by truncating/zero-padding the spectrum (the clip is padded first so
    that the implied periodic extension does not wrap speech onto itself)."""
    if rate_in == rate_out:
        return x
    pad = rate_in // 10
    xp = np.concatenate([np.zeros(pad), x, np.zeros(pad)])
    n = len(xp)
    m = int(round(n * rate_out / rate_in))
    spec = np.fft.rfft(xp)
    keep = min(len(spec), m // 2 + 1)
    out_spec = np.zeros(m // 2 + 1, dtype=complex)
    out_spec[:keep] = spec[:keep]
    y = np.fft.irfft(out_spec, m) * (m / n)
    cut = int(round(pad * rate_out / rate_in))
    return y[cut:len(y) - cut]


def trim(x, rate, rel_threshold=0.02, margin_s=0.015):
    """Remove leading/trailing silence: keep from the first to the last 10 ms frame whose peak is
    above rel_threshold of the clip's peak, plus a small margin."""
    frame = rate // 100
    n = len(x) // frame
    peaks = np.abs(x[:n * frame]).reshape(n, frame).max(axis=1)
    active = np.flatnonzero(peaks > rel_threshold * peaks.max())
    m = int(margin_s * rate)
    start = max(0, active[0] * frame - m)
    end = min(len(x), (active[-1] + 1) * frame + m)
    return x[start:end]


def place_in_clip(word, rng, max_jitter_s=0.1):
    """Put the word in a 1 s clip of zeros, centred with a random offset, as Speech Commands clips are."""
    if len(word) > CLIP:
        excess = len(word) - CLIP
        word = word[excess // 2: excess // 2 + CLIP]
    clip = np.zeros(CLIP)
    slack = CLIP - len(word)
    start = slack // 2 + int(rng.integers(-1, 2) * rng.uniform(0, max_jitter_s) * SAMPLE_RATE)
    start = int(np.clip(start, 0, slack))
    clip[start:start + len(word)] = word
    return clip


def noise(kind, rng, n=CLIP):
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    if kind == "pink":
        spec = np.fft.rfft(white)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        spec /= np.sqrt(f)
        spec[0] = 0.0
        return np.fft.irfft(spec, n)
    raise ValueError(kind)


def to_int16_range(x):
    """Scale to 16-bit PCM values as Speech Commands wavs are stored (the front end then divides by the
    maximum, so only the shape matters)."""
    peak = np.abs(x).max()
    return np.round(x / peak * 0.7 * 32767) if peak > 0 else x


# ----------------------------------------------------------------------------------------------
# Front end (tf.signal semantics)
# ----------------------------------------------------------------------------------------------

def hertz_to_mel(f):
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def linear_to_mel_weight_matrix(num_mel=NUM_MEL, num_bins=NFFT // 2 + 1, rate=SAMPLE_RATE, lo=MEL_LO, hi=MEL_HI):
    freqs = np.linspace(0.0, rate / 2.0, num_bins)[1:]  # the DC bin gets no weight
    bins_mel = hertz_to_mel(freqs)[:, None]
    edges = np.linspace(hertz_to_mel(lo), hertz_to_mel(hi), num_mel + 2)
    lower, center, upper = edges[:-2][None, :], edges[1:-1][None, :], edges[2:][None, :]
    lower_slopes = (bins_mel - lower) / (center - lower)
    upper_slopes = (upper - bins_mel) / (upper - center)
    w = np.maximum(0.0, np.minimum(lower_slopes, upper_slopes))
    return np.vstack([np.zeros((1, num_mel)), w]).astype(np.float32)


MEL_MATRIX = linear_to_mel_weight_matrix()
HANN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)).astype(np.float32)  # periodic
_k = np.arange(NUM_MFCC)[:, None]
_n = np.arange(NUM_MEL)[None, :]
DCT = (2.0 * np.cos(np.pi * _k * (2 * _n + 1) / (2 * NUM_MEL)) / np.sqrt(2.0 * NUM_MEL)).T.astype(np.float32)


def mfcc(pcm):
    """pcm: 16000 samples (int16 values or any scale). Returns float32 49x10."""
    x = np.asarray(pcm, dtype=np.float32)
    x = x / x.max()  # tf.reduce_max, as the reference does
    idx = np.arange(NUM_FRAMES)[:, None] * HOP + np.arange(WINDOW)[None, :]
    frames = x[idx] * HANN
    mag = np.abs(np.fft.rfft(frames, n=NFFT, axis=1)).astype(np.float32)
    log_mel = np.log(mag @ MEL_MATRIX + 1e-6)
    return (log_mel @ DCT).astype(np.float32)


# ----------------------------------------------------------------------------------------------

def build_dataset(rng, per_word, n_unknown, n_silence, log=print):
    xs, ys, texts, voices = [], [], [], []

    def add_word(text, label):
        voice = VOICES[rng.integers(len(VOICES))]
        variant = VARIANTS[rng.integers(len(VARIANTS))]
        v = voice + ("+" + variant if variant else "")
        speed = int(rng.integers(110, 200))
        pitch = int(rng.integers(20, 80))
        audio, rate = espeak(text, v, speed, pitch)
        audio = resample(trim(audio, rate), rate, SAMPLE_RATE)
        clip = place_in_clip(audio, rng)
        desc = f"{v} s{speed} p{pitch}"
        if rng.uniform() < 0.5:  # a quiet noise floor, 25-45 dB below the speech peak
            snr_db = rng.uniform(25, 45)
            nz = noise(rng.choice(["white", "pink"]), rng)
            clip = clip + nz / np.abs(nz).max() * np.abs(clip).max() * 10 ** (-snr_db / 20)
            desc += f" +noise{snr_db:.0f}dB"
        xs.append(mfcc(to_int16_range(clip)))
        ys.append(label)
        texts.append(text)
        voices.append(desc)

    for w in KEYWORDS:
        for _ in range(per_word):
            add_word(w, LABELS.index(w))
    for i in range(n_unknown):
        add_word(UNKNOWN_WORDS[i % len(UNKNOWN_WORDS)], UNKNOWN)
    for i in range(n_silence):
        kind = ["white", "pink"][i % 2]
        xs.append(mfcc(to_int16_range(noise(kind, rng))))
        ys.append(SILENCE)
        texts.append("")
        voices.append(f"noise:{kind}")
    x = np.stack(xs)[..., None].astype(np.float32)
    return x, np.array(ys, dtype=np.int64), np.array(texts), np.array(voices)


def stats(name, x):
    c = x[..., 0]
    print(f"{name:>14}: min {c.min():8.2f} max {c.max():7.2f} | mean per coefficient "
          + " ".join(f"{v:6.1f}" for v in c.reshape(-1, NUM_MFCC).mean(0)))


def score(model_path, x, y):
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not importable: skipping the model check")
        return
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name

    def run(batch):
        return np.concatenate([sess.run(None, {inp: batch[i:i + 1]})[0] for i in range(len(batch))])

    real = np.load(REAL_INPUT)
    real_pred = int(run(real).argmax())
    print(f"shared real input {os.path.basename(REAL_INPUT)} -> class {real_pred} "
          f"({LABELS[real_pred]} in tfds order){'' if real_pred == 5 else '  (EXPECTED 5!)'}")

    prob = run(x)
    pred = prob.argmax(1)
    acc = (pred == y).mean()
    kw = y < 10
    print(f"float model accuracy vs intended labels: {acc:.3f} ({int((pred == y).sum())}/{len(y)}); "
          f"keywords only {np.mean(pred[kw] == y[kw]):.3f}; silence {np.mean(pred[y == SILENCE] == SILENCE):.3f}; "
          f"unknown {np.mean(pred[y == UNKNOWN] == UNKNOWN):.3f}")
    # Same predictions read with the other label order, to show which order the model uses.
    remap = np.array([LABELS.index(TF_EXAMPLE_ORDER[i]) for i in range(12)])
    print(f"(reading the outputs in the 'silence, unknown, yes, no, ...' order instead: "
          f"{(remap[pred] == y).mean():.3f})")
    print("predicted-class histogram:", {LABELS[i]: int(c) for i, c in enumerate(np.bincount(pred, minlength=12))})
    print("confusion (rows intended, cols predicted; order " + ",".join(l.strip("_")[:4] for l in LABELS) + "):")
    cm = np.zeros((12, 12), dtype=int)
    np.add.at(cm, (y, pred), 1)
    for i in range(12):
        if cm[i].sum():
            print(f"  {LABELS[i]:>10} " + " ".join(f"{v:3d}" for v in cm[i]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data",
                                                  "kws_speech.npz"))
    ap.add_argument("--per-word", type=int, default=28)
    ap.add_argument("--unknown", type=int, default=25)
    ap.add_argument("--silence", type=int, default=20)
    args = ap.parse_args()

    rng = np.random.default_rng(SEED)
    x, y, texts, voices = build_dataset(rng, args.per_word, args.unknown, args.silence)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, x=x, y=y, text=texts, voice=voices)
    print(f"wrote {os.path.relpath(args.out)}: x {x.shape} {x.dtype}, y {y.shape}, "
          f"{os.path.getsize(args.out)} bytes")
    print("label counts:", {LABELS[i]: int(c) for i, c in enumerate(np.bincount(y, minlength=12))})

    real = np.load(REAL_INPUT)
    stats("real input", real)
    stats("synth keywords", x[y < 10])
    stats("synth silence", x[y == SILENCE])
    lo, hi = (-128 - 83) * 0.5847, (127 - 83) * 0.5847
    print(f"fraction of synthetic features outside the int8 input range [{lo:.1f}, {hi:.1f}]: "
          f"{np.mean((x < lo) | (x > hi)):.4f}")
    score(args.model, x, y)


if __name__ == "__main__":
    sys.exit(main())
