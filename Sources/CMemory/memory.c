// CMemory is header-only (see include/CMemory.h); SwiftPM needs one source file per C target.
#include "CMemory.h"
