"""Quantization of detectors (lesson 03).

- ``dynamic``: the article's ``quantize_dynamic`` call (it leaves every Conv2d in float, measured), torchao's
  current dynamic API, fp16 storage and fp16 compute.
- ``ort``: static int8 of the detector's exportable core in ONNX Runtime (QDQ, per-channel weights, activation
  type and weight range chosen per CPU, MinMax/Entropy/Percentile calibration, parts kept float), compacted so
  the file is ~4x smaller than fp32.
- ``profile``: what an int8 file holds (bytes by kind, int8 vs fp32 convs as ORT runs them) and where its time goes
  (ONNX Runtime's own profiler, per operator type).
- ``openvino``: NNCF's int8 of the core as an OpenVINO IR (post-training, or under an mAP budget with accuracy
  control), parts kept float by the kit's part names, and OpenVINO's own operator profile.
- ``pt2e``: torchao PT2E int8 with the X86 Inductor quantizer, lowered with ``torch.compile``.
- ``qat``: quantization-aware training of the PT2E fake-quant core through the engine's one training loop.
- ``deploy_head``: the FCOS head with BatchNorm instead of GroupNorm, so int8 has no float island in the head;
  fine-tuned through the engine.
- ``calibration``: exactly N train images as core inputs.

Introduced in ``03_quantization.ipynb``.
"""

from compresskit.settings import quiet_library_notices

quiet_library_notices()  # before torchao is first imported

from compresskit.quantize.calibration import calibration_batches, calibration_indices  # noqa: E402
from compresskit.quantize.dynamic import (DynamicQuantResult, article_dynamic_quant, fp16_compute, fp16_storage,
                                          fp16_to_float, torchao_dynamic_quant)
from compresskit.quantize.ort import (OrtQuantConfig, QuantizedCore, choose_activations, choose_reduce_range,
                                     quantize_core_onnx)
from compresskit.quantize.openvino import (OpenVinoQuantConfig, OpenVinoQuantized, openvino_op_profile,
                                           quantize_core_openvino, quantize_core_openvino_with_accuracy_control)
from compresskit.quantize.pt2e import Pt2eConfig, Pt2eCore, prepare_qat_core, quantize_pt2e
from compresskit.quantize.qat import QatConfig, QatDetector, qat_finetune
from compresskit.quantize.profile import (int8_report, onnx_bytes_by_kind, op_time_profile, part_node_names)

__all__ = ["DynamicQuantResult", "OrtQuantConfig", "QuantizedCore", "article_dynamic_quant", "calibration_batches",
           "calibration_indices", "choose_activations", "choose_reduce_range", "fp16_compute", "fp16_storage",
           "fp16_to_float", "int8_report", "onnx_bytes_by_kind", "op_time_profile", "OpenVinoQuantConfig",
           "OpenVinoQuantized", "openvino_op_profile", "part_node_names", "quantize_core_openvino",
           "quantize_core_openvino_with_accuracy_control",
           "Pt2eConfig", "Pt2eCore", "QatConfig", "QatDetector", "prepare_qat_core", "qat_finetune",
           "quantize_core_onnx", "quantize_pt2e", "torchao_dynamic_quant"]
