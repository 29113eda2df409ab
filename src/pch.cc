// Anchor translation unit for the shared precompiled header of <torch/torch.h>.
// Every torch-using target reuses this PCH (see graft_use_pch in CMakeLists.txt).
