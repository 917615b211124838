// A ZIP archive of already-compressed files (PNG), built in the browser: entries are stored
// uncompressed (method 0), each with its CRC-32 (PKWARE APPNOTE 6.3, sections 4.3 and 4.4).

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

export function crc32(bytes) {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function header(size, fields) {
  const view = new DataView(new ArrayBuffer(size));
  let offset = 0;
  for (const [bytes, value] of fields) {
    if (bytes === 4) view.setUint32(offset, value, true);
    else view.setUint16(offset, value, true);
    offset += bytes;
  }
  return new Uint8Array(view.buffer);
}

/** files: [{name, bytes: Uint8Array}] -> a Blob of type application/zip. */
export function zipStored(files) {
  const encoder = new TextEncoder();
  const parts = [];
  const central = [];
  let offset = 0;
  for (const file of files) {
    const name = encoder.encode(file.name);
    const crc = crc32(file.bytes);
    const size = file.bytes.length;
    // version 2.0, flags 0x0800 (UTF-8 names), method 0 (stored), DOS time/date 0 (1980-01-01)
    const common = [[2, 20], [2, 0x0800], [2, 0], [2, 0], [2, 0x21], [4, crc], [4, size], [4, size], [2, name.length]];
    const local = header(30, [[4, 0x04034b50], ...common, [2, 0]]);
    parts.push(local, name, file.bytes);
    central.push(header(46, [[4, 0x02014b50], [2, 20], ...common, [2, 0], [2, 0], [2, 0], [2, 0], [4, 0], [4, offset]]), name);
    offset += local.length + name.length + size;
  }
  const centralSize = central.reduce((sum, part) => sum + part.length, 0);
  const end = header(22, [[4, 0x06054b50], [2, 0], [2, 0], [2, files.length], [2, files.length], [4, centralSize], [4, offset], [2, 0]]);
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}
