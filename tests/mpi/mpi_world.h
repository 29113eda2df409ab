#pragma once
#include "communicator.h"
namespace graft::testing {
extern Communicator* g_comm;  // set by mpi_main.cc for the whole run
}
