"""Reads run directories (files only) and writes tables beside the papers' numbers; never trains."""
