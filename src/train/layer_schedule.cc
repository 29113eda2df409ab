#include "train/layer_schedule.h"

#include <cmath>
#include <cstdlib>

namespace graft {

int layerOf(const std::string& name, int n_layers) {
  if (name.compare(0, 7, "layers.") == 0) return std::atoi(name.c_str() + 7);
  if (name.find("embeddings") != std::string::npos) return -1;
  return n_layers;
}

double layerLrScale(const std::string& name, int n_layers, double decay, std::int64_t unfreeze_every, std::int64_t step) {
  const int layer = layerOf(name, n_layers);
  if (unfreeze_every > 0) {
    // Step s (1-based) trains the top, the last layer, and (s - 1) / N layers below it.
    const std::int64_t unfrozen_below_top = (step - 1) / unfreeze_every;
    const std::int64_t depth_from_top = n_layers - 1 - layer;  // last layer 0, embeddings n_layers, top -1
    if (layer < n_layers && depth_from_top > unfrozen_below_top) return 0.0;
  }
  if (decay >= 1.0 || layer >= n_layers) return 1.0;
  return std::pow(decay, n_layers - 1 - layer);
}

}  // namespace graft
