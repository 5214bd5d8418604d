"""Build hook: the C helper is compiled through cffi's out-of-line API mode."""
from setuptools import setup

setup(cffi_modules=["vmdnet/_native/build.py:ffibuilder"])
