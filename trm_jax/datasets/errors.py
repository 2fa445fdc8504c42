"""The data error every builder, downloader and reader raises (also `common.DataError`)."""


class DataError(ValueError):
  """A user error in the raw data: one line, names the file and row/task."""
