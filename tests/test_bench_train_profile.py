"""bench.train_profile: the HLO names it reports per thunk, and the conv formulations it times agree."""
import pytest

pytest.importorskip("torch")
from bench import train_profile  # noqa: E402

HLO = """HloModule jit_step

%fused_convolution (param_0: f32[8,7,7,16], param_1: f32[3,3,16,16]) -> f32[8,7,7,16] {
  %param_0 = f32[8,7,7,16]{3,2,1,0} parameter(0)
  %param_1 = f32[3,3,16,16]{3,2,1,0} parameter(1)
  ROOT %convolution.3 = f32[8,7,7,16]{3,2,1,0} convolution(%param_0, %param_1), window={size=3x3 pad=1_1x1_1}, \
dim_labels=b01f_01io->b01f
}

ENTRY %main (p0: f32[8,7,7,16], p1: f32[3,3,16,16]) -> f32[8,7,7,16] {
  %p0 = f32[8,7,7,16]{3,2,1,0} parameter(0)
  %p1 = f32[3,3,16,16]{3,2,1,0} parameter(1)
  %copy.1 = f32[3,3,16,16]{3,2,1,0} copy(%p1)
  ROOT %ynn_fusion.2 = f32[8,7,7,16]{3,2,1,0} fusion(%p0, %copy.1), kind=kCustom, calls=%fused_convolution
}
"""


def test_hlo_roots_names_a_fusion_by_its_root():
  described = train_profile.hlo_roots(HLO)
  assert described["ynn_fusion.2"] == "fusion -> convolution f32[8,7,7,16] [size=3x3 pad=1_1x1_1]"
  assert described["copy.1"] == "copy f32[3,3,16,16]"


def test_conv_formulations_agree_and_are_timed():
  times = train_profile.conv_formulations(2, 5, 4, 8, repeats=1)  # asserts the formulations agree to 1e-5
  assert len(times) == 9 and all(t > 0 for t in times.values())
