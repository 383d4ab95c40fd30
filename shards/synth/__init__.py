"""A synthetic nuScenes-format world: ``synthesize(out, ...)`` writes a devkit-loadable dataroot.

Modules: :mod:`~shards.synth.world` (scene layout and motion), :mod:`~shards.synth.rig`
(cameras, LiDAR), :mod:`~shards.synth.render` (numba rendering and ray casting),
:mod:`~shards.synth.sensors` (one keyframe's sensor data), :mod:`~shards.synth.dataroot`
(the nuScenes tables and files).
"""

from shards.synth.dataroot import VERSIONS, SynthError, scene_names, synthesize

__all__ = ["synthesize", "scene_names", "SynthError", "VERSIONS"]
