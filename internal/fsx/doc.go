// Package fsx writes files and folders so that a crash (kill -9, power
// loss, a full disk) leaves either the old content or the new, never a mix,
// and keeps two runs from writing one folder at once.
//
//   - WriteFile writes a temporary file beside the target, fsyncs it and
//     renames it over the target, then fsyncs the folder.
//   - SaveDir makes the files of one save a unit: they are written into a
//     fresh sibling folder, the folder's other entries are hard-linked in
//     beside them, everything is fsynced, and the two folders are exchanged
//     in one step (Linux renameat2 RENAME_EXCHANGE). Where the exchange is
//     not available the files are renamed in one by one (each file whole,
//     the set not a unit).
//   - Lock takes an exclusive lock on a folder for the life of a run.
//
// What it is not: a general file library. Readers that trust a file's
// numbers still check them; fsx only makes sure an input is a regular file
// (Open and ReadFile open without blocking and check the file they opened:
// a named pipe would block a plain open itself; CheckRegular checks a path)
// and strips a UTF-8 byte-order mark from text (TrimBOM).
//
// The trade-off: SaveDir hard-links the folder's other entries into the
// stage, so a save costs a walk of the folder; a file another process adds
// to the folder during that save is left in the old tree and removed with
// it (qtune's own writers hold the folder's Lock).
package fsx
