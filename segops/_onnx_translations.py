"""The onnxscript translations behind segops.onnx.translation_table() (imported only when onnxscript is installed).

Each function takes the op's schema arguments (tensors as ONNX values, the rest as Python values, traced by the
exporter) and returns the op's outputs built from standard ONNX operators of opset 18. segops.onnx imports this module
(and makes the dense CRF's ops raise); nothing here imports segops.onnx."""

from onnxscript import INT32, INT64, opset18 as op


def _rois_split(rois):
    """rois [K, 5] (batch index, x1, y1, x2, y2) -> (boxes [K, 4], batch indices [K] int64)."""
    boxes = op.Slice(rois, op.Constant(value_ints=[1]), op.Constant(value_ints=[5]), op.Constant(value_ints=[1]))
    index = op.Slice(rois, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]), op.Constant(value_ints=[1]))
    return boxes, op.Cast(op.Squeeze(index, op.Constant(value_ints=[1])), to=INT64.dtype)


def _roi_align(features, boxes, batch_indices, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    return op.RoiAlign(
        features,
        boxes,
        batch_indices,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        mode="avg",
        output_height=pooled_height,
        output_width=pooled_width,
        sampling_ratio=max(sampling_ratio, 0),  # ONNX's 0 is segops' <= 0: ceil(box size / bins) samples
        spatial_scale=spatial_scale,
    )


def roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    boxes, batch_indices = _rois_split(rois)
    return _roi_align(input, boxes, batch_indices, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def ps_roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    # RoiAlign pools every channel at every bin, [K, C, PH, PW]; ps_roi_align's bin b = (ph, pw) of output channel c
    # is input channel c * PH * PW + b at bin b: the diagonal of the [K, C_out, PH * PW, PH * PW] view, gathered.
    bins = pooled_height * pooled_width
    boxes, batch_indices = _rois_split(rois)
    pooled = _roi_align(input, boxes, batch_indices, spatial_scale, pooled_height, pooled_width, sampling_ratio, True)
    grouped = op.Reshape(pooled, op.Constant(value_ints=[0, -1, bins, bins]))
    leading = op.Slice(op.Shape(grouped), op.Constant(value_ints=[0]), op.Constant(value_ints=[2]))
    diagonal = op.Expand(
        op.Constant(value_ints=list(range(bins))), op.Concat(leading, op.Constant(value_ints=[1, bins]), axis=0)
    )
    chosen = op.GatherElements(grouped, diagonal, axis=2)  # [K, C_out, 1, PH * PW]
    return op.Reshape(chosen, op.Constant(value_ints=[0, -1, pooled_height, pooled_width]))


def multi_scale_roi_align(features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned):
    # ONNX has no gather across tensors of different shapes: every level pools every box, and each box keeps the
    # row of its own level (L times the work of one RoiAlign, the same values).
    boxes, batch_indices = _rois_split(rois)
    row_level = op.Reshape(levels, op.Constant(value_ints=[-1, 1, 1, 1]))
    output = None
    for level, (feature, scale) in enumerate(zip(features, spatial_scales)):
        pooled = _roi_align(feature, boxes, batch_indices, scale, pooled_height, pooled_width, sampling_ratio, aligned)
        if output is None:
            output = pooled
        else:
            output = op.Where(op.Equal(row_level, op.Constant(value_int=level)), pooled, output)
    return output


def roi_pool(input, rois, spatial_scale, pooled_height, pooled_width):
    pooled = op.MaxRoiPool(input, rois, pooled_shape=[pooled_height, pooled_width], spatial_scale=spatial_scale)
    argmax = op.Expand(op.Constant(value_int=-1), op.Shape(pooled))
    return pooled, op.Cast(argmax, to=INT32.dtype)


def max_unpool2d(input, indices, output_height, output_width):
    # PyTorch's indices count within each [Ho, Wo] plane; ONNX's within the whole [N, C, Ho, Wo] tensor.
    batch_channels = op.Slice(op.Shape(input), op.Constant(value_ints=[0]), op.Constant(value_ints=[2]))
    height = op.Reshape(op.Cast(output_height, to=INT64.dtype), op.Constant(value_ints=[1]))
    width = op.Reshape(op.Cast(output_width, to=INT64.dtype), op.Constant(value_ints=[1]))
    planes = op.Range(op.Constant(value_int=0), op.ReduceProd(batch_channels, keepdims=0), op.Constant(value_int=1))
    offsets = op.Reshape(
        op.Mul(planes, op.Squeeze(op.Mul(height, width))),
        op.Concat(batch_channels, op.Constant(value_ints=[1, 1]), axis=0),
    )
    output_shape = op.Concat(batch_channels, height, width, axis=0)
    return op.MaxUnpool(input, op.Add(indices, offsets), output_shape, kernel_shape=[1, 1], strides=[1, 1])


def dilated_conv2d(input, weight, bias, stride, padding, dilation, groups):
    pads = [padding[0], padding[1], padding[0], padding[1]]
    if bias is None:
        return op.Conv(input, weight, dilations=dilation, group=groups, pads=pads, strides=stride)
    return op.Conv(input, weight, bias, dilations=dilation, group=groups, pads=pads, strides=stride)


def flow_warp(feature, flow, scale=None):
    # GridSample(align_corners=1) maps -1 and 1 to the centres of the first and last pixels: x -> 2 x / (W - 1) - 1.
    feature_shape = op.Cast(op.Shape(feature), to=flow.dtype)
    flow_shape = op.Shape(flow)
    height = op.Slice(flow_shape, op.Constant(value_ints=[2]), op.Constant(value_ints=[3]))
    width = op.Slice(flow_shape, op.Constant(value_ints=[3]), op.Constant(value_ints=[4]))
    one = op.CastLike(op.Constant(value_float=1.0), flow)
    xs = op.Cast(op.Range(op.Constant(value_int=0), op.Squeeze(width), op.Constant(value_int=1)), to=flow.dtype)
    ys = op.Cast(op.Range(op.Constant(value_int=0), op.Squeeze(height), op.Constant(value_int=1)), to=flow.dtype)
    position = op.Concat(
        op.Expand(
            op.Reshape(xs, op.Constant(value_ints=[1, 1, 1, -1])),
            op.Concat(op.Constant(value_ints=[1, 1]), height, width, axis=0),
        ),
        op.Expand(
            op.Reshape(ys, op.Constant(value_ints=[1, 1, -1, 1])),
            op.Concat(op.Constant(value_ints=[1, 1]), height, width, axis=0),
        ),
        axis=1,
    )  # [1, 2, Ho, Wo]: (x, y) of every output pixel
    extent = op.Max(
        op.Sub(op.Slice(feature_shape, op.Constant(value_ints=[2]), op.Constant(value_ints=[4])), one), one
    )  # (H - 1, W - 1), at least 1
    extent_xy = op.Reshape(
        op.Concat(
            op.Slice(extent, op.Constant(value_ints=[1]), op.Constant(value_ints=[2])),
            op.Slice(extent, op.Constant(value_ints=[0]), op.Constant(value_ints=[1])),
            axis=0,
        ),
        op.Constant(value_ints=[1, 2, 1, 1]),
    )
    grid = op.Sub(op.Div(op.Mul(op.Add(position, flow), op.Add(one, one)), extent_xy), one)
    grid = op.Transpose(op.CastLike(grid, feature), perm=[0, 2, 3, 1])  # [N, Ho, Wo, 2]
    warped = op.GridSample(feature, grid, align_corners=1, mode="bilinear", padding_mode="zeros")
    return warped if scale is None else op.Mul(warped, scale)
