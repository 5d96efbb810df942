// Package layering holds the test that keeps imports pointing down.
package layering
