/*
 * vn_version.c - report the version the helper was built for, so the Python
 * loader can refuse a stale build.
 */
#include "vn_version.h"

#ifndef VN_VERSION
#error "VN_VERSION must be defined by the build (vmdnet/_native/build.py)"
#endif

/**
 * vn_version() - version string of the package this module was built from
 *
 * Return: a static NUL-terminated string, e.g. "0.1.0"
 */
const char *vn_version(void)
{
	return VN_VERSION;
}
