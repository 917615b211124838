// A picture of a `.safetensors` latent for its card: its first three channels as red, green
// and blue, each stretched over its mean +- 2 standard deviations. Read in the browser from
// the file itself (header: 8-byte little-endian length, then JSON naming dtype, shape, offsets).

function halfToFloat(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

function values(buffer, start, end, dtype) {
  const bytes = buffer.slice(start, end); // a copy: typed arrays need aligned offsets
  if (dtype === "F32") return new Float32Array(bytes);
  if (dtype === "F64") return new Float64Array(bytes);
  const halves = new Uint16Array(bytes);
  if (dtype === "F16") return Float32Array.from(halves, halfToFloat);
  if (dtype === "BF16") return new Float32Array(new Uint32Array(Array.from(halves, (h) => h << 16)).buffer);
  throw new Error(`dtype ${dtype} is not previewed`);
}

/** The `latent` tensor of a safetensors file: {shape: [C, H, W], data: Float32Array-like}. */
export function readLatent(buffer) {
  const headerLength = Number(new DataView(buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(buffer.slice(8, 8 + headerLength)));
  const tensor = header.latent;
  if (!tensor) throw new Error("no tensor named 'latent'");
  const [start, end] = tensor.data_offsets;
  const base = 8 + headerLength;
  const shape = tensor.shape.length === 4 ? tensor.shape.slice(1) : tensor.shape;
  return { shape, data: values(buffer, base + start, base + end, tensor.dtype) };
}

/** A canvas showing channels 0-2 (a single channel as grey). */
export function latentCanvas({ shape, data }) {
  const [channels, height, width] = shape;
  const plane = height * width;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  for (let rgb = 0; rgb < 3; rgb++) {
    const channel = Math.min(rgb, channels - 1);
    const offset = channel * plane;
    let sum = 0;
    let squares = 0;
    for (let i = 0; i < plane; i++) {
      sum += data[offset + i];
      squares += data[offset + i] ** 2;
    }
    const mean = sum / plane;
    const spread = 2 * Math.sqrt(Math.max(squares / plane - mean * mean, 1e-12));
    for (let i = 0; i < plane; i++) {
      const unit = (data[offset + i] - mean + spread) / (2 * spread);
      image.data[4 * i + rgb] = Math.max(0, Math.min(255, Math.round(255 * unit)));
      image.data[4 * i + 3] = 255;
    }
  }
  context.putImageData(image, 0, 0);
  return canvas;
}
