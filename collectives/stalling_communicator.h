// Fault injection for tests (debug.stall_at): a communicator that forwards every collective to
// another one, except that this rank stops for good, without a word to the others, when it reaches
// the collective tagged `tag`. The other ranks must then name the collective and this rank within
// dist.timeout_s (collectives/communicator.h: Work::wait).
#pragma once

#include <memory>
#include <string>

#include "communicator.h"

namespace graft {

std::unique_ptr<Communicator> stallingCommunicator(std::unique_ptr<Communicator> inner, std::string tag);

}  // namespace graft
