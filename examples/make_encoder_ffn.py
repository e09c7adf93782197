"""Writes examples/encoder-ffn.qir: an encoder FFN block (16 -> 32 -> 16) with seeded random f32 weights
held as resources, the second weight quantized to NVFP4, and the redundancies an exporter leaves
(identities, constant scale arithmetic, duplicated subexpressions) for the passes to remove.
Run: python3 examples/make_encoder_ffn.py (standard library only)."""
import random
import struct

random.seed(0)


def blob(n):
    data = struct.pack("<%df" % n, *[random.gauss(0.0, 0.25) for _ in range(n)])
    return "0x04000000" + data.hex().upper()


D, H = 16, 32
text = f"""// An encoder FFN block: y = (relu(x W1 + b1) W2^T) / sqrt(d) + x, W2 quantized to NVFP4.
func.func @encoder_ffn(%x: tensor<1x[seq]x{D}xf32>) -> tensor<1x[seq]x{D}xf32> {{
  %w1 = qc.constant {{value = dense_resource<ffn.in.w>}} : () -> tensor<{D}x{H}xf32>
  %b1 = qc.constant {{value = dense_resource<ffn.in.b>}} : () -> tensor<{H}xf32>
  %w2 = qc.constant {{value = dense_resource<ffn.out.w>}} : () -> tensor<{D}x{H}xf32>
  %xi = nn.identity %x : (tensor<1x[seq]x{D}xf32>) -> tensor<1x[seq]x{D}xf32>
  %h = nn.matmul %xi, %w1 : (tensor<1x[seq]x{D}xf32>, tensor<{D}x{H}xf32>) -> tensor<1x[seq]x{H}xf32>
  %hb = nn.add %h, %b1 : (tensor<1x[seq]x{H}xf32>, tensor<{H}xf32>) -> tensor<1x[seq]x{H}xf32>
  %a = nn.relu %hb : (tensor<1x[seq]x{H}xf32>) -> tensor<1x[seq]x{H}xf32>
  %w2q = quant.quantize %w2 : (tensor<{D}x{H}xf32>) -> tensor<{D}x{H}x!quant.nvfp4>
  %o = quant.matmul %a, %w2q {{transpose_b}} : (tensor<1x[seq]x{H}xf32>, tensor<{D}x{H}x!quant.nvfp4>) -> tensor<1x[seq]x{D}xf32>
  %d = qc.constant {{value = dense<{float(D)}>}} : () -> tensor<f32>
  %one = qc.constant {{value = dense<1.0>}} : () -> tensor<f32>
  %sd = nn.sqrt %d : (tensor<f32>) -> tensor<f32>
  %inv = nn.div %one, %sd : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %os = nn.mul %o, %inv : (tensor<1x[seq]x{D}xf32>, tensor<f32>) -> tensor<1x[seq]x{D}xf32>
  %unused = nn.relu %hb : (tensor<1x[seq]x{H}xf32>) -> tensor<1x[seq]x{H}xf32>
  %res = nn.add %os, %xi : (tensor<1x[seq]x{D}xf32>, tensor<1x[seq]x{D}xf32>) -> tensor<1x[seq]x{D}xf32>
  %out = nn.mul %res, %one : (tensor<1x[seq]x{D}xf32>, tensor<f32>) -> tensor<1x[seq]x{D}xf32>
  return %out : tensor<1x[seq]x{D}xf32>
}}

{{-#
  dialect_resources: {{
    qc: {{
      ffn.in.b: "{blob(H)}",
      ffn.in.w: "{blob(D * H)}",
      ffn.out.w: "{blob(D * H)}"
    }}
  }}
#-}}
"""
open("examples/encoder-ffn.qir", "w").write(text)
