"""Shared test setup: make tests/ importable (pktlib, netns helpers) and report skips."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
