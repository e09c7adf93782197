// Loop nests for the NVIDIA targets' tiling (compiler/tests/ptx.rs, gpu_tiling_*): innermost extents
// 300 and 260 (a full tile of cuda::THREADS and a partial one), a broadcast, a reduction over the last
// axis (15 rows: one tile), a matrix product, a reduction over a middle axis (left untiled) and a
// rank-4 broadcast (whose tiles along the last axis are a loop in the thread).
#id3 = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
#last3 = affine_map<(d0, d1, d2) -> (d2)>
#id2 = affine_map<(d0, d1) -> (d0, d1)>
#row2 = affine_map<(d0, d1) -> (d0)>
#mm_a = affine_map<(d0, d1, d2) -> (d0, d2)>
#mm_b = affine_map<(d0, d1, d2) -> (d2, d1)>
#mm_c = affine_map<(d0, d1, d2) -> (d0, d1)>
#mid_c = affine_map<(d0, d1, d2) -> (d0, d2)>
#id4 = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3)>
#skip2 = affine_map<(d0, d1, d2, d3) -> (d0, d1, d3)>
module {
  func.func @main(%x: tensor<3x5x300xf32>, %b: tensor<300xf32>, %w: tensor<300x260xf32>) -> (tensor<3x5x300xf32>, tensor<15xf32>, tensor<15x260xf32>, tensor<3x300xf32>, tensor<3x5x2x300xf32>) {
    %zero = arith.constant 0.0 : f32
    %e3 = tensor.empty() : tensor<3x5x300xf32>
    %y = linalg.generic {indexing_maps = [#id3, #last3, #id3], iterator_types = ["parallel", "parallel", "parallel"]} ins(%x, %b : tensor<3x5x300xf32>, tensor<300xf32>) outs(%e3 : tensor<3x5x300xf32>) {
    ^bb0(%a: f32, %c: f32, %o: f32):
      %s = arith.mulf %a, %c : f32
      %t = arith.addf %s, %a : f32
      linalg.yield %t : f32
    } -> tensor<3x5x300xf32>
    %y2 = tensor.collapse_shape %y [[0, 1], [2]] : tensor<3x5x300xf32> into tensor<15x300xf32>
    %e1 = tensor.empty() : tensor<15xf32>
    %f1 = linalg.fill ins(%zero : f32) outs(%e1 : tensor<15xf32>) -> tensor<15xf32>
    %sum = linalg.generic {indexing_maps = [#id2, #row2], iterator_types = ["parallel", "reduction"]} ins(%y2 : tensor<15x300xf32>) outs(%f1 : tensor<15xf32>) {
    ^bb0(%a: f32, %o: f32):
      %t = arith.addf %a, %o : f32
      linalg.yield %t : f32
    } -> tensor<15xf32>
    %e2 = tensor.empty() : tensor<15x260xf32>
    %f2 = linalg.fill ins(%zero : f32) outs(%e2 : tensor<15x260xf32>) -> tensor<15x260xf32>
    %mm = linalg.generic {indexing_maps = [#mm_a, #mm_b, #mm_c], iterator_types = ["parallel", "parallel", "reduction"]} ins(%y2, %w : tensor<15x300xf32>, tensor<300x260xf32>) outs(%f2 : tensor<15x260xf32>) {
    ^bb0(%a: f32, %c: f32, %o: f32):
      %s = arith.mulf %a, %c : f32
      %t = arith.addf %s, %o : f32
      linalg.yield %t : f32
    } -> tensor<15x260xf32>
    %e4 = tensor.empty() : tensor<3x300xf32>
    %f4 = linalg.fill ins(%zero : f32) outs(%e4 : tensor<3x300xf32>) -> tensor<3x300xf32>
    %mid = linalg.generic {indexing_maps = [#id3, #mid_c], iterator_types = ["parallel", "reduction", "parallel"]} ins(%y : tensor<3x5x300xf32>) outs(%f4 : tensor<3x300xf32>) {
    ^bb0(%a: f32, %o: f32):
      %t = arith.addf %a, %o : f32
      linalg.yield %t : f32
    } -> tensor<3x300xf32>
    %e5 = tensor.empty() : tensor<3x5x2x300xf32>
    %twice = linalg.generic {indexing_maps = [#skip2, #id4], iterator_types = ["parallel", "parallel", "parallel", "parallel"]} ins(%y : tensor<3x5x300xf32>) outs(%e5 : tensor<3x5x2x300xf32>) {
    ^bb0(%a: f32, %o: f32):
      %t = arith.addf %a, %a : f32
      linalg.yield %t : f32
    } -> tensor<3x5x2x300xf32>
    return %y, %sum, %mm, %mid, %twice : tensor<3x5x300xf32>, tensor<15xf32>, tensor<15x260xf32>, tensor<3x300xf32>, tensor<3x5x2x300xf32>
  }
}
