"""vhdtool: get VHD disk images from any producer into Azure, correctly and fast."""

__version__ = "0.1.0"
