// Package methods groups the update rules qtune offers; each lives in its
// own subpackage (lora today; mezo, loho and loreml next). A method decides
// what is trainable and how a step's update is computed; the model computes
// losses and gradients, optim applies updates, train runs the loop.
package methods
