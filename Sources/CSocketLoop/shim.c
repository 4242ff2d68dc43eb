// CSocketLoop is header-only (see include/CSocketLoop.h); SwiftPM needs one source file per C target.
#include "CSocketLoop.h"
