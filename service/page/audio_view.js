// Drawing audio in the page: decode with the Web Audio API, draw a waveform and a spectrogram
// on canvases, pick a time range by dragging on a waveform. No libraries.

const DECODE_RATE = 22050; // enough for drawing; decodeAudioData resamples to the context's rate
const FFT_SIZE = 512;

/** Decode audio bytes (WAV, FLAC, OGG, MP3) to an AudioBuffer. */
export async function decodeAudio(bytes) {
  const context = new OfflineAudioContext(1, 1, DECODE_RATE);
  return await context.decodeAudioData(bytes.slice(0));
}

/** The mean of the buffer's channels, as one Float32Array. */
function mono(buffer) {
  const out = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < data.length; i++) out[i] += data[i] / buffer.numberOfChannels;
  }
  return out;
}

function cssColor(canvas, name, fallback) {
  const value = getComputedStyle(canvas).getPropertyValue(name).trim();
  return value || fallback;
}

/**
 * Min/max per pixel column, scaled to the clip's own peak (its level is written in the
 * corner, in dB of full scale); `range` = [start, end] seconds shaded (or null).
 */
export function drawWaveform(canvas, buffer, range = null) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const samples = mono(buffer);
  let peak = 0;
  for (const sample of samples) peak = Math.max(peak, Math.abs(sample));
  const scale = peak > 0 ? 1 / peak : 1;
  ctx.fillStyle = cssColor(canvas, "--wave-bg", "#f4f4f8");
  ctx.fillRect(0, 0, width, height);
  if (range) {
    const x0 = (range[0] / buffer.duration) * width;
    const x1 = (range[1] / buffer.duration) * width;
    ctx.fillStyle = cssColor(canvas, "--range", "rgba(255, 170, 0, 0.35)");
    ctx.fillRect(x0, 0, Math.max(1, x1 - x0), height);
  }
  ctx.fillStyle = cssColor(canvas, "--wave", "#3550c8");
  const per = Math.max(1, Math.floor(samples.length / width));
  for (let x = 0; x < width; x++) {
    let low = 1, high = -1;
    const start = x * per;
    for (let i = start; i < Math.min(samples.length, start + per); i++) {
      if (samples[i] < low) low = samples[i];
      if (samples[i] > high) high = samples[i];
    }
    if (high < low) continue;
    const y0 = ((1 - high * scale) / 2) * height;
    const y1 = ((1 - low * scale) / 2) * height;
    ctx.fillRect(x, y0, 1, Math.max(1, y1 - y0));
  }
  ctx.fillStyle = cssColor(canvas, "--muted", "#5a5a6a");
  ctx.font = "12px system-ui, sans-serif";
  const level = peak > 0 ? `${(20 * Math.log10(peak)).toFixed(1)} dBFS peak` : "silent";
  ctx.fillText(level, 4, 14);
}

/** In-place radix-2 FFT of (re, im), length a power of two. */
function fft(re, im) {
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      [re[i], re[j]] = [re[j], re[i]];
      [im[i], im[j]] = [im[j], im[i]];
    }
  }
  for (let size = 2; size <= n; size <<= 1) {
    const angle = (-2 * Math.PI) / size;
    const wr = Math.cos(angle), wi = Math.sin(angle);
    for (let start = 0; start < n; start += size) {
      let cr = 1, ci = 0;
      for (let k = 0; k < size / 2; k++) {
        const a = start + k, b = a + size / 2;
        const tr = re[b] * cr - im[b] * ci;
        const ti = re[b] * ci + im[b] * cr;
        re[b] = re[a] - tr; im[b] = im[a] - ti;
        re[a] += tr; im[a] += ti;
        [cr, ci] = [cr * wr - ci * wi, cr * wi + ci * wr];
      }
    }
  }
}

/** Dark blue (quiet) through orange to pale yellow (loud), for t in [0, 1]. */
function heat(t) {
  const r = Math.round(255 * Math.min(1, Math.max(0, 1.6 * t - 0.1)));
  const g = Math.round(255 * Math.min(1, Math.max(0, 1.8 * t - 0.7)));
  const b = Math.round(255 * Math.min(1, Math.max(0, t < 0.5 ? 0.3 + t : 1.6 - 1.6 * t)));
  return [r, g, b];
}

/** One Hann-windowed FFT per pixel column; log frequency (40 Hz up), 80 dB of range. */
export function drawSpectrogram(canvas, buffer) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const samples = mono(buffer);
  const image = ctx.createImageData(width, height);
  const bins = FFT_SIZE / 2;
  const window = new Float32Array(FFT_SIZE).map(
    (_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / (FFT_SIZE - 1)));
  const columns = [];
  let peak = -Infinity;
  for (let x = 0; x < width; x++) {
    const centre = Math.floor(((x + 0.5) / width) * samples.length);
    const re = new Float32Array(FFT_SIZE), im = new Float32Array(FFT_SIZE);
    for (let i = 0; i < FFT_SIZE; i++) {
      const index = centre - FFT_SIZE / 2 + i;
      re[i] = index >= 0 && index < samples.length ? samples[index] * window[i] : 0;
    }
    fft(re, im);
    const column = new Float32Array(bins);
    for (let k = 0; k < bins; k++) {
      column[k] = 10 * Math.log10(re[k] * re[k] + im[k] * im[k] + 1e-12);
      if (column[k] > peak) peak = column[k];
    }
    columns.push(column);
  }
  const lowest = 40 / (buffer.sampleRate / FFT_SIZE); // in bins
  const rowBin = Array.from({ length: height }, (_, y) => Math.min(
    bins - 1, Math.round(lowest * (bins / lowest) ** ((height - 1 - y) / (height - 1)))));
  for (let x = 0; x < width; x++) {
    for (let y = 0; y < height; y++) {
      const bin = rowBin[y];
      const t = Math.max(0, Math.min(1, (columns[x][bin] - peak + 80) / 80));
      const [r, g, b] = heat(t);
      const offset = (y * width + x) * 4;
      image.data[offset] = r; image.data[offset + 1] = g; image.data[offset + 2] = b;
      image.data[offset + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
}

/**
 * Let the user drag a time range on `canvas` (pointer: mouse, touch, pen). `onChange` gets
 * [start, end] in seconds, rounded to 0.01 s, once the drag ends.
 */
export function pickRange(canvas, duration, onChange) {
  let anchor = null;
  const seconds = (event) => {
    const box = canvas.getBoundingClientRect();
    const x = Math.min(Math.max(event.clientX - box.left, 0), box.width);
    return Math.round((x / box.width) * duration * 100) / 100;
  };
  canvas.onpointerdown = (event) => {
    anchor = seconds(event);
    canvas.setPointerCapture(event.pointerId);
  };
  canvas.onpointerup = (event) => {
    if (anchor === null) return;
    const here = seconds(event);
    const range = [Math.min(anchor, here), Math.max(anchor, here)];
    anchor = null;
    if (range[1] - range[0] >= 0.05) onChange(range);
  };
}
