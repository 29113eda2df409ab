// Layer-wise learning rates for full fine-tuning, as pure functions of the parameter name and the
// step (so resume needs no extra state):
//   layer-wise decay (transfer.layer_lr_decay = d < 1): layer i of L trains at lr x d^(L-1-i), the
//     embeddings at lr x d^L, the final norm, classifier and head at lr;
//   gradual unfreezing (transfer.unfreeze_every = N > 0): the top (final norm, classifier, head,
//     last layer) trains from step 1 and one more layer below unfreezes every N steps, the
//     embeddings last. A parameter not yet unfrozen gets scale 0: AdamW leaves it alone.
#pragma once

#include <cstdint>
#include <string>

namespace graft {

// The layer a parameter belongs to: 0..n_layers-1 for "layers.<i>.", -1 for the embeddings,
// n_layers for everything above the last layer.
int layerOf(const std::string& name, int n_layers);

double layerLrScale(const std::string& name, int n_layers, double decay, std::int64_t unfreeze_every, std::int64_t step);

}  // namespace graft
