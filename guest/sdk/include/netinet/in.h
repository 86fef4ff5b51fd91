/* hwemu guest SDK: the whole libc subset lives in hwemu.h. */
#include <hwemu.h>
