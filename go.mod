module github.com/qtune/qtune

go 1.26.8

require (
	github.com/rs/zerolog v1.35.1
	golang.org/x/exp v0.0.0-20261113113407-e3970619a1a4
)

require (
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	golang.org/x/sys v0.29.0 // indirect
)
