/*
 * vn_version.h - the package version stamped into the built C helper.
 */
#ifndef VN_VERSION_H
#define VN_VERSION_H

/* VN_CDEF_BEGIN */
const char *vn_version(void);
/* VN_CDEF_END */

#endif
