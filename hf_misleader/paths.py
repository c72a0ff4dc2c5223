"""Output folders of the demo, the recipe and the benchmark: made up front, with a clear error when they cannot be."""

from __future__ import annotations

from pathlib import Path


def output_folder(path, name: str = "output directory", create: bool = True) -> Path:
    """
    Create the folder `path` (and its parents) if missing (only check that it could be, with `create=False`), and
    return it as a `Path`.

    An existing regular file at `path` or above it would otherwise surface as bare errno text (`[Errno 17] File
    exists`, `Not a directory`), possibly after training; this names the file instead.

    Raises:
        `NotADirectoryError` (an `OSError`, which the command line reports as one line): the message names the file.
    """
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        if folder.exists():  # something that is not a folder stands where one must be
            if folder == path:
                raise NotADirectoryError(f"{name} {path} is a file, not a folder: choose another {name}.")
            raise NotADirectoryError(f"{name} {path} cannot be created: {folder} is a file, not a folder.")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # read-only or system folders: say which folder, not only the errno text
            raise OSError(f"{name} {path} cannot be created: {error.strerror or error}.") from error
    return path
